"""Every value checked before any work: each bad value or condition below ends in one `error:` line naming
the key, exit status 2, no traceback and nothing in results/, within 5 seconds of the start (before a model
or a data set is loaded)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import needs_shared, run_cli, tiny_c4, tiny_glue, with_overrides

pytestmark = [needs_shared, pytest.mark.slow]


def _glue(tmp, *extra):
    return with_overrides(tiny_glue(tmp, "train.num_threads=1"), *extra)


def _c4(tmp, *extra):
    return with_overrides(tiny_c4(tmp, "train.num_threads=1"), *extra)


def _a_file(tmp):
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile"


# id -> (args for tmp_path, fragments the one error line must hold)
CASES = {
    # the values listed in issue 10
    "scale_negative": (lambda t: _glue(t, "scale=-1"), ["scale=-1.0", "> 0"]),
    "min_lr_ratio_negative": (lambda t: _glue(t, "train.min_lr_ratio=-5"), ["train.min_lr_ratio=-5", ">= 0"]),
    "warmup_ratio_above_one": (lambda t: _glue(t, "train.warmup_ratio=5"), ["train.warmup_ratio=5", "< 1"]),
    "warmup_ratio_one": (lambda t: _glue(t, "train.warmup_ratio=1"), ["train.warmup_ratio=1", "< 1"]),
    "micro_batch_zero": (lambda t: _glue(t, "train.micro_batch_size=0"), ["train.micro_batch_size=0", ">= 1"]),
    "grad_clip_negative": (lambda t: _glue(t, "train.grad_clip=-1"), ["train.grad_clip=-1", ">= 0"]),
    "eval_every_negative": (lambda t: _glue(t, "train.eval_every=-1"), ["train.eval_every=-1", ">= 1"]),
    "stop_at_step_negative": (lambda t: _glue(t, "train.stop_at_step=-1"), ["train.stop_at_step=-1", ">= 1"]),
    "proj_type_bogus": (lambda t: _glue(t, "method.proj_type=bogus"), ["method.proj_type='bogus'", "'std'"]),
    "update_proj_gap_zero": (lambda t: _glue(t, "method.update_proj_gap=0"), ["method.update_proj_gap=0", ">= 1"]),
    "svd_bogus": (lambda t: _glue(t, "method.svd=bogus"), ["method.svd='bogus'", "'randomized'"]),
    "beta_above_one": (lambda t: _glue(t, "method.betas=[0.9,1.5]"), ["method.betas=[0.9, 1.5]", "< 1"]),
    "betas_three": (lambda t: _glue(t, "method.betas=[0.9,0.99,0.999]"), ["method.betas", "2 values"]),
    "target_modules_bad_regex": (lambda t: _glue(t, "method.target_modules='('"),
                                 ["method.target_modules='('", "regular expression"]),
    "target_modules_unquoted": (lambda t: _glue(t, "method.target_modules=["), ["could not be parsed", "quote"]),
    "seed_text": (lambda t: _glue(t, "seed=abc"), ["seed=abc", "Integer"]),
    "seed_fraction": (lambda t: _glue(t, "seed=3.5"), ["seed=3.5", "Integer"]),
    "seed_beyond_64_bits": (lambda t: _glue(t, f"seed={2**64 + 1}"), [f"seed={2**64 + 1}", "< 2147483648"]),
    "seed_negative": (lambda t: _glue(t, "seed=-1"), ["seed=-1", ">= 0"]),
    "log_every_zero": (lambda t: _glue(t, "train.log_every=0"), ["train.log_every=0", ">= 1"]),
    "rank_negative": (lambda t: _glue(t, "method=galore", "rank=-1"), ["rank=-1", ">= 1"]),
    "rank_fraction": (lambda t: _glue(t, "method=galore", "rank=3.5"), ["rank=3.5", "Integer"]),
    "rank_zero": (lambda t: _glue(t, "method=lora", "rank=0"), ["rank=0", ">= 1"]),
    # more of the same kind
    "lr_zero": (lambda t: _glue(t, "train.lr=0"), ["train.lr=0", "> 0"]),
    "lr_text": (lambda t: _glue(t, "train.lr=fast"), ["train.lr=fast", "Float"]),
    "batch_zero": (lambda t: _glue(t, "train.batch_size=0"), ["train.batch_size=0", ">= 1"]),
    "epochs_zero": (lambda t: _glue(t, "train.epochs=0"), ["train.epochs=0", ">= 1"]),
    "max_steps_zero": (lambda t: _glue(t, "train.max_steps=0"), ["train.max_steps=0", ">= 1"]),
    "micro_batch_not_dividing": (lambda t: _glue(t, "train.micro_batch_size=5"),
                                 ["train.micro_batch_size=5", "must divide", "train.batch_size=16"]),
    "stop_after_the_last_step": (lambda t: _c4(t, "train.stop_at_step=13"), ["train.stop_at_step=13", "max_steps=12"]),
    "on_nonfinite_bogus": (lambda t: _glue(t, "train.on_nonfinite=ignore"), ["train.on_nonfinite='ignore'", "'skip'"]),
    "weight_decay_negative": (lambda t: _glue(t, "train.weight_decay=-0.1"), ["train.weight_decay=-0.1", ">= 0"]),
    "num_threads_zero": (lambda t: _glue(t, "train.num_threads=0"), ["train.num_threads=0", ">= 1"]),
    "optim_bits_16": (lambda t: _glue(t, "precision.optim_bits=16"), ["precision.optim_bits=16", "8, 32"]),
    "autocast_bogus": (lambda t: _glue(t, "precision.autocast=fp8"), ["precision.autocast='fp8'", "'bfloat16'"]),
    "device_tpu": (lambda t: _glue(t, "device=tpu"), ["device='tpu'", "'cuda'"]),
    "logger_mode_bogus": (lambda t: _glue(t, "logger.mode=maybe"), ["logger.mode='maybe'", "'offline'"]),
    "eps_zero": (lambda t: _glue(t, "method.eps=0"), ["method.eps=0", "> 0"]),
    "lora_dropout_above_one": (lambda t: _glue(t, "method=lora", "method.lora_dropout=1.5"),
                               ["method.lora_dropout=1.5", "< 1"]),
    "lora_alpha_negative": (lambda t: _glue(t, "method=lora", "method.lora_alpha=-16"), ["method.lora_alpha=-16", "> 0"]),
    "layerwise_with_clipping": (lambda t: _glue(t, "method.layerwise=true"), ["method.layerwise=true", "grad_clip=0"]),
    "max_length_zero": (lambda t: _glue(t, "task.max_length=0"), ["task.max_length=0", ">= 1"]),
    "seq_len_one": (lambda t: _c4(t, "task.seq_len=1"), ["task.seq_len=1", ">= 2"]),
    "streams_not_dividing_the_batch": (lambda t: _c4(t, "task.streams=3"), ["task.streams=3", "train.batch_size=4"]),
    "c4_without_max_steps": (lambda t: _c4(t, "train.max_steps=null"), ["train.max_steps=null", "max_steps x"]),
    "unknown_key": (lambda t: _glue(t, "train.nonexistent=1"), ["train.nonexistent", "gnlorp.schema"]),
    "unknown_key_added_with_plus": (lambda t: _glue(t, "+model.hidden_dropout=0"),
                                    ["+model.hidden_dropout=0", "run identity", "gnlorp/schema.py"]),
    "dropout_one": (lambda t: _glue(t, "model.hidden_dropout_prob=1"), ["model.hidden_dropout_prob=1", "< 1"]),
    "c4_key_on_glue": (lambda t: _glue(t, "task.seq_len=512"), ["task.seq_len=512", "c4 runs only", "max_length"]),
    "glue_key_on_c4": (lambda t: _c4(t, "task.max_length=64"), ["task.max_length=64", "glue runs only", "seq_len"]),
    "multirun_with_cfg": (lambda t: ["-m", "--cfg", "hydra", *_glue(t)], ["--multirun, --cfg", "drop all but one"]),
    "unknown_method": (lambda t: _glue(t, "method=sgd"), ["method", "'sgd'", "gradnormlorp"]),
    "unknown_experiment": (lambda t: _glue(t, "experiment=nope"), ["experiment=nope", "glue_minilm_cpu"]),
    "c4_with_an_encoder": (lambda t: _c4(t, "model=bert_tiny"), ["task=c4", "model=bert_tiny", "llama"]),
    "glue_with_a_llama": (lambda t: _glue(t, "model=llama_tiny"), ["model=llama_tiny", "encoder"]),
    "name_with_a_slash": (lambda t: _glue(t, "name=a/b"), ["name='a/b'", "letters, digits"]),
    "name_too_long": (lambda t: _glue(t, "name=" + "x" * 300), ["file names of", "shorter name"]),
    # output locations, tested before training
    "results_dir_is_a_file": (lambda t: _glue(t, f"results_dir={_a_file(t)}"), ["results_dir=", "is a file"]),
    "results_dir_unwritable": (lambda t: _glue(t, "results_dir=/proc/self/gnlorp-results"),
                               ["results_dir='/proc/self/gnlorp-results'", "cannot be written"]),
    "checkpoint_dir_is_a_file": (lambda t: _glue(t, f"checkpoint_dir={_a_file(t)}"), ["checkpoint_dir=", "is a file"]),
}


def _check(tmp_path, case):
    make_args, fragments = CASES[case]
    folder = tmp_path / case
    folder.mkdir()
    p = run_cli(make_args(folder), folder)
    out = p.stdout + p.stderr
    problems = []
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    if p.returncode != 2:
        problems.append(f"exit {p.returncode}")
    if "Traceback" in out:
        problems.append("a traceback")
    if len(errors) != 1 or not all(f in errors[0] for f in fragments):
        problems.append(f"error lines {errors}, wanted one holding {fragments}")
    results = folder / "results"
    if results.exists() and any(results.iterdir()):
        problems.append(f"results/ holds {[p.name for p in results.iterdir()]}")
    if p.seconds > 5:
        problems.append(f"took {p.seconds:.1f} s")
    return case, problems, out[-1500:]


def test_every_bad_value_is_one_error_line_before_any_work(tmp_path):
    assert len(CASES) >= 35
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda c: _check(tmp_path, c), CASES))
    failed = {case: (problems, out) for case, problems, out in outcomes if problems}
    assert not failed, "\n\n".join(f"{case}: {problems}\n{out}" for case, (problems, out) in failed.items())
