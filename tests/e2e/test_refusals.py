"""Issue 25 (parts 5 and 6): every refusal of every command the package installs is one `error:` line, a non-zero
exit and no traceback, naming the real cause; what needs no data answers within 5 seconds, before any data or
model is loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import C4_DIR, GLUE_DIR, ROOT, cli_env, run_cli, tiny_c4, tiny_glue, with_overrides


def _glue(tmp, *extra):
    return with_overrides(tiny_glue(tmp, "train.num_threads=1"), *extra)


def _c4(tmp, *extra):
    return with_overrides(tiny_c4(tmp, "train.num_threads=1"), *extra)


def _one_error_line(p, fragments: list[str], code: int = 2) -> list[str]:
    """What is wrong with a finished command that should have refused in one line holding `fragments`."""
    problems = []
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    if p.returncode != code:
        problems.append(f"exit {p.returncode}")
    if "Traceback" in p.stdout + p.stderr:
        problems.append("a traceback")
    if len(errors) != 1 or not all(f in errors[0] for f in fragments):
        problems.append(f"error lines {errors}, wanted one holding {fragments}")
    return problems


# id -> (args for tmp_path, fragments of the one error line); each needs no data, so each answers within 5 s
EARLY = {
    "relora_rewarm_longer_than_the_cycle": (
        lambda t: _glue(t, "method=relora", "method.relora_restart_warmup=200", "method.relora_reset_every=100"),
        ["method.relora_restart_warmup=200", "relora_reset_every=100"]),
    "switchlora_interval_under_twice_the_warm_step": (
        lambda t: _glue(t, "method=switchlora", "method.switch_lora_interval=8", "method.adam_warm_step=5"),
        ["method.switch_lora_interval=8", "2 x adam_warm_step (10)"]),
    "rank_above_an_encoder_matrix": (lambda t: _glue(t, "method=lora", "rank=33"),
                                     ["rank=33", "smallest target matrix dimension (32", "rank <= 32"]),
    "rank_above_a_llama_matrix": (lambda t: _c4(t, "method=galore", "rank=65"), ["rank=65", "rank <= 64"]),
    "rank_above_a_pretrained_matrix": (  # MiniLM's dims from its config.json (hidden 384), not its weights
        lambda t: _glue(t, "model=minilm", "method=gradnormlorp", "rank=385"), ["rank=385", "rank <= 384"]),
    "targets_matching_nothing": (lambda t: _glue(t, "method=galore", "method.target_modules=nothing_here"),
                                 ["target_modules='nothing_here'"]),
    "seq_len_above_max_positions": (lambda t: _c4(t, "task.seq_len=512"),
                                    ["task.seq_len=512", "max_position_embeddings: 256", "task.seq_len=256"]),
    "max_length_above_max_positions": (lambda t: _glue(t, "task.max_length=600"),
                                       ["task.max_length=600", "max_position_embeddings: 512"]),
    "eval_tokens_under_one_block": (lambda t: _c4(t, "task.eval_tokens=32"),
                                    ["task.eval_tokens=32", "task.seq_len=64", "task.eval_tokens >= 64"]),
    "torchao_states_for_a_low_rank_method": (lambda t: _c4(t, "method=galore", "precision=ao8bit"),
                                             ["precision=ao8bit", "method=galore", "precision=8bit"]),
}


def _early(tmp_path, case):
    make_args, fragments = EARLY[case]
    folder = tmp_path / case
    folder.mkdir()
    p = run_cli(make_args(folder), folder)
    problems = _one_error_line(p, fragments)
    if (folder / "results").exists() and any((folder / "results").iterdir()):
        problems.append("a result was written")
    if p.seconds > 5:
        problems.append(f"took {p.seconds:.1f} s")
    return case, problems, (p.stdout + p.stderr)[-1500:]


@pytest.mark.slow
def test_checks_that_need_no_data_answer_in_one_line_before_any_loading(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda c: _early(tmp_path, c), EARLY))
    failed = {case: (problems, out) for case, problems, out in outcomes if problems}
    assert not failed, "\n\n".join(f"{case}: {problems}\n{out}" for case, (problems, out) in failed.items())


# ----------------------------------------------------------------------------------------- unreadable data
def _as_another_user() -> list[str] | None:
    """The prefix that runs a command as a user whom file permissions bind (root ignores them), or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


@pytest.mark.skipif(_as_another_user() is None or not GLUE_DIR.is_dir() or not C4_DIR.is_dir(),
                    reason="needs the shared data, and setpriv when run as root")
def test_an_unreadable_data_folder_is_named_as_unreadable():
    work = Path(tempfile.mkdtemp(prefix="gnlorp-unreadable-"))  # not under pytest's private tmp: the other user
    try:                                                     # must reach it
        work.chmod(0o777)
        (work / "c4").mkdir()
        shutil.copy(next(C4_DIR.glob("c4-validation.*.json.gz")), work / "c4")
        (work / "glue" / "RTE").mkdir(parents=True)
        for f in ("train.tsv", "dev.tsv"):
            shutil.copy(GLUE_DIR / "RTE" / f, work / "glue" / "RTE")
        (work / "c4").chmod(0)
        (work / "glue" / "RTE").chmod(0)
        cases = {"c4": (_c4(work, f"task.data_dir={work}/c4"), [f"C4 data folder '{work}/c4' cannot be read"]),
                 "glue": (_glue(work, f"task.data_dir={work}/glue"),
                          [f"GLUE task folder {work}/glue/RTE is not readable"])}
        for case, (args, fragments) in cases.items():
            p = subprocess.run([*_as_another_user(), sys.executable, str(ROOT / "run.py"), *args], cwd=work,
                               env=cli_env({"HOME": str(work)}), capture_output=True, text=True, timeout=120)
            assert not _one_error_line(p, fragments), (case, _one_error_line(p, fragments), p.stderr[-2000:])
    finally:
        for d in (work / "c4", work / "glue" / "RTE"):
            d.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------- SLURM preset
@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM")
def test_the_slurm_preset_without_slurm_is_one_line(tmp_path):
    p = run_cli(["-m", "hydra/launcher=slurm", *_glue(tmp_path)], tmp_path)
    assert not _one_error_line(p, ["hydra/launcher=slurm", "no `srun`"]), p.stderr[-3000:]
    assert p.seconds < 5


# ----------------------------------------------------------------------------------------- keep_going summary
def test_the_sweep_summary_names_the_failed_points_by_what_sets_them_apart():
    from gnlorp.cli import sweep_summary

    common = ["task=glue/rte", "keep_going=true"]
    points = [{"num": 0, "overrides": [*common, "method=full", "train.lr=0"], "status": "failed", "exit": 2},
              {"num": 1, "overrides": [*common, "method=lora", "train.lr=0"], "status": "complete", "exit": 0},
              {"num": 2, "overrides": [*common, "method=lora", "train.lr=1e-3"], "status": "skipped", "exit": 0},
              {"num": 3, "overrides": [*common, "method=full", "train.lr=1e-3"], "status": "failed", "exit": 3}]
    assert sweep_summary(points).startswith(
        "keep_going=true: the sweep's 4 point(s) ended: 1 complete, 1 skipped, 2 failed. Failed: "
        "#0 method=full train.lr=0 (exit 2); #3 method=full train.lr=1e-3 (exit 3); their errors are above.")
    assert sweep_summary(points[1:3]) == "keep_going=true: the sweep's 2 point(s) ended: 1 complete, 1 skipped."


# ----------------------------------------------------------------------------------------- python -m gnlorp.memory
MEMORY = {  # argv of `python -m gnlorp.memory` -> fragments of its one error line
    "sizes_unknown": (["--sizes", "nope"], ["unknown model 'nope'"]),
    "sizes_an_encoder": (["--sizes", "bert_tiny"], ["--sizes bert_tiny", "encoder"]),
    "ranks_zero": (["--ranks", "0"], ["--ranks 0", "positive"]),
    "ranks_beyond_every_size": (["--sizes", "llama_60m", "--ranks", "600"], ["--ranks 600", "largest: 512"]),
    "ranks_not_a_number": (["--ranks", "x"], ["--ranks", "'x'", "--help"]),
    "json_unwritable": (["--sizes", "llama_60m", "--json", "/proc/gnlorp-nope/m.json"], ["/proc/gnlorp-nope"]),
    "peak_model_unknown_without_rank": (["peak", "--model", "nope"], ["unknown model 'nope'"]),
    "peak_an_encoder": (["peak", "--model", "minilm", "--rank", "8"], ["model minilm is an encoder"]),
    "peak_without_rank": (["peak"], ["method=gradnormlorp needs a positive rank (--rank"]),
    "peak_rank_beyond_every_matrix": (["peak", "--rank", "100000"], ["rank=100000", "rank <= 512"]),
    "peak_batch_zero": (["peak", "--rank", "8", "--batch", "0"], ["batch=0"]),
    "peak_unknown_option": (["peak", "--ranks", "8"], ["unrecognized arguments: --ranks"]),
}


@pytest.mark.parametrize("case", list(MEMORY))
def test_memory_commands_refuse_in_one_line(case, capsys):
    from gnlorp.memory import main

    argv, fragments = MEMORY[case]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr()
    assert stop.value.code == 2
    assert err.out == "" and err.err.count("\n") == 1 and err.err.startswith("error: "), err
    assert all(f in err.err for f in fragments), err.err


def test_memory_peak_refuses_a_rank_larger_than_any_matrix_as_a_command():
    p = subprocess.run([sys.executable, "-m", "gnlorp.memory", "peak", "--rank", "100000"], cwd=ROOT,
                       env=cli_env(), capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    assert p.stderr == ("error: rank=100000 is larger than the smallest target matrix dimension of llama_60m (512); "
                        "choose rank <= 512.\n")


# ----------------------------------------------------------------------------------------- the transformers integration
@pytest.mark.parametrize("argument,value,accepted", [
    ("proj_type", "bogus", "'std', 'reverse_std', 'left', 'right', 'full'"),
    ("update_proj_gap", 0, "an integer >= 1"),
    ("svd", "fast", "'exact', 'randomized', 'auto'"),
    ("scale", -1.0, "a finite number > 0"),
    ("rank", 2.5, "an integer >= 1"),
])
def test_the_integration_checks_its_arguments_when_the_optimizer_is_built(argument, value, accepted):
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from gnlorp.integrations.transformers import galore, gradnormlorp

    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    for factory in (galore, gradnormlorp):
        with pytest.raises(ValueError) as refused:
            factory(model, args, **{"rank": 4, argument: value})
        text = str(refused.value)
        assert text.startswith(f"{argument}={value!r} is not accepted") and accepted in text and "\n" not in text
    assert not any(type(m).__name__ == "WeightNormLinear" for m in model.modules())  # refused before any change
