"""Every config group option composes, and the settings that reach the method are the documented ones."""

import re

import pytest

from conftest import CONF, ROOT, compose
from gnlorp.runner import check_config, method_config, run_name

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("model", "method", "precision")}
GLUE = sorted(p.stem for p in (CONF / "task" / "glue").glob("*.yaml") if not p.stem.startswith("_"))


def test_all_nine_glue_tasks_and_c4_exist():
    assert GLUE == sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])
    assert (CONF / "task" / "c4.yaml").exists()
    assert set(GROUPS["method"]) == {"full", "lora", "dora", "galore", "gradnormlorp", "relora", "switchlora",
                                     "apollo", "apollo_mini", "fira"}
    assert set(GROUPS["precision"]) == {"fp32", "bf16", "8bit", "ao8bit", "ao4bit"}


@pytest.mark.parametrize("task", [f"glue/{t}" for t in GLUE] + ["c4"])
def test_every_task_composes_with_a_learning_rate_per_method(task):
    for method in GROUPS["method"]:
        cfg = compose([f"task={task}", f"method={method}"])
        derived = check_config(cfg)
        assert derived["lr"] > 0
    assert cfg.task.name == task.split("/")[-1]


@pytest.mark.parametrize("group", ["model", "method", "precision"])
def test_every_option_of_every_group_composes(group):
    for option in GROUPS[group]:
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None


def _scale(overrides):
    cfg = compose(overrides)
    return method_config(cfg, check_config(cfg)).scale


def test_scale_comes_from_the_task_alpha_table_unless_given():
    # GaLore Table 7 (GLUE): alpha 4 at rank 4, 2 at rank 8; C4 (GaLore section 5): 0.25 at every rank
    assert (_scale(["rank=4", "method=galore"]), _scale(["rank=8", "method=galore"])) == (4.0, 2.0)
    assert _scale(["rank=12", "method=galore"]) == 2.0  # any rank: the table's default
    c4 = compose(["task=c4", "rank=128", "method=gradnormlorp"])
    m = method_config(c4, check_config(c4))
    assert (m.rank, m.scale) == (128, 0.25)
    assert _scale(["rank=8", "scale=3.0", "method=galore"]) == 3.0


def test_rank_is_a_plain_integer_that_hydra_sweeps_natively():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert compose(["rank=12"]).rank == 12
    parsed = OverridesParser.create().parse_overrides(["rank=choice(4,8)", "rank=4,8", "rank=range(4,12,4)"])
    assert [list(o.sweep_iterator()) for o in parsed] == [[4, 8], [4, 8], [4, 8]]
    assert [compose([f"rank={r}"]).rank for r in (4, 8)] == [4, 8]


def test_method_config_carries_precision_and_accumulation():
    cfg = compose(["method=gradnormlorp", "rank=8", "precision=8bit", "train.batch_size=32", "train.micro_batch_size=8"])
    m = method_config(cfg, check_config(cfg))
    assert (m.name, m.rank, m.scale, m.optim_bits, m.accumulation_steps, m.lr) == ("gradnormlorp", 8, 2.0, 8, 4, 3e-4)


def test_run_name_names_the_groups():
    assert run_name(compose(["task=glue/mrpc", "method=lora", "rank=4", "seed=2"])) == "glue-mrpc-minilm-lora-r4-fp32-s2"
    assert run_name(compose(["task=c4", "model=llama_60m", "method=full", "precision=bf16"])) == "c4-llama_60m-full-bf16-s0"
    # a train subset is another experiment: the CPU sweep's MRPC run never shares a file with the quickstart's
    sub = compose(["experiment=glue_minilm_cpu", "task=glue/stsb", "method=gradnormlorp"])
    assert run_name(sub) == "glue-stsb-minilm-gradnormlorp-r8-fp32-n1200-s0"
    assert run_name(compose(["task=glue/mrpc", "method=gradnormlorp"])) == "glue-mrpc-minilm-gradnormlorp-r8-fp32-s0"


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `python run.py ...` command in README.md and run.py's docstring (continuation lines joined),
    as its overrides; a multirun's comma lists give their first value. Sweeps (-cd/-cn) are tested in
    test_sweeps.py."""
    from gnlorp.cli import USAGE

    commands = []
    for source, text in (("README.md", (ROOT / "README.md").read_text()), ("gnlorp/cli.py", USAGE)):
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if not re.match(r"(\.venv/bin/)?python run\.py ", line) or " -cd " in line or "--cfg" in line:
                continue
            overrides = [a.split("=", 1) for a in line.split("run.py", 1)[1].split() if "=" in a]
            commands.append((source, [f"{key}={value.split(',')[0]}" for key, value in overrides]))
    return commands


def test_every_documented_command_composes_and_passes_the_config_check():
    commands = _documented_commands()
    assert len(commands) >= 10, commands  # the README's and run.py's examples were found
    for source, args in commands:
        cfg = compose(args)
        assert check_config(cfg)["lr"] > 0, (source, args)
    experiment = compose(["experiment=c4_llama_20m_cpu", "method=gradnormlorp"])
    assert (experiment.model.name, experiment.rank, experiment.train.max_steps) == ("llama_20m", 64, 200)


def test_help_shows_the_commands_and_only_public_choices():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert "python run.py experiment=c4_llama_20m_cpu method=gradnormlorp" in p.stdout  # run.py's documented commands
    assert "glue/mrpc" in p.stdout and "c4_llama_20m_cpu" in p.stdout and "gnlorp.schema" in p.stdout
    assert "_common" not in p.stdout and "_c4_paper" not in p.stdout  # shared parts are not choices


def test_slurm_launcher_preset_composes_and_tasks_become_torch_distributed_ranks(monkeypatch):
    """hydra/launcher=slurm is submitit's SLURM launcher with one task per GPU; inside a job of 2 nodes x 2 tasks,
    task 3 becomes rank 3 of 4 (local rank 1) with the first node as master, as torchrun would set it."""
    import subprocess
    import sys

    import yaml

    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "hydra/launcher=slurm", "hydra.launcher.nodes=2",
                        "hydra.launcher.tasks_per_node=2", "--cfg", "hydra"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    launcher = yaml.safe_load(p.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and (launcher["nodes"], launcher["tasks_per_node"]) == (2, 2)
    import os

    from gnlorp.runner import distributed_env_from_slurm

    # submitit writes os.environ directly: give it a copy that the test's end throws away (a leaked WORLD_SIZE
    # would make every later in-process run wait for 3 more processes)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
                       "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                       "SLURM_JOB_NODELIST": "gpu[07-08]"}.items():
        os.environ[key] = value
    distributed_env_from_slurm()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("4", "3", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000


def test_fsdp_refuses_only_the_methods_that_declare_they_cannot_shard():
    from gnlorp.errors import UserError
    from gnlorp.methods import SPECS

    refusing = {name for name, spec in SPECS.items() if spec.fsdp_refusal}
    assert refusing == {"switchlora", "apollo", "apollo_mini", "fira"}
    for name in SPECS:
        cfg = compose(["task=c4", f"method={name}", "train.parallel=fsdp", "train.max_steps=2"])
        check_config(cfg, world_size=1)  # one process never shards
        if name in refusing:
            with pytest.raises(UserError, match=rf"method={name} cannot run with train.parallel=fsdp .*ddp"):
                check_config(cfg, world_size=2)
        else:
            check_config(cfg, world_size=2)


def test_group_by_length_is_part_of_a_glue_runs_identity_and_refused_for_c4():
    from gnlorp.errors import UserError
    from gnlorp.runner import run_identity

    plain = compose(["task=glue/rte", "method=lora"])
    grouped = compose(["task=glue/rte", "method=lora", "train.group_by_length=true"])
    assert "train.group_by_length" not in run_identity(plain, check_config(plain)).settings  # earlier results keep their file
    assert run_identity(grouped, check_config(grouped)).settings["train.group_by_length"] is True
    c4 = compose(["task=c4", "method=lora", "train.max_steps=2", "train.group_by_length=true"])
    with pytest.raises(UserError, match="train.group_by_length=true groups GLUE examples by length; C4 .*drop it"):
        check_config(c4)


def test_an_encoders_dropout_is_a_declared_setting_in_the_run_identity():
    """model.hidden_dropout_prob (once only reachable as an undeclared `+model...` key, which left the identity
    unchanged) is declared: set, it changes the run's hash; at its default the hash is as before."""
    from gnlorp.runner import run_identity

    plain = compose(["task=glue/rte", "method=lora"])
    off = compose(["task=glue/rte", "method=lora", "model.hidden_dropout_prob=0.0"])
    assert "model.hidden_dropout_prob" not in run_identity(plain, check_config(plain)).settings
    assert run_identity(off, check_config(off)).settings["model.hidden_dropout_prob"] == 0.0
    assert run_identity(off, check_config(off)).run_id != run_identity(plain, check_config(plain)).run_id


def test_a_setting_added_later_keeps_old_identities_at_its_default(monkeypatch):
    """identity=UNLESS_DEFAULT: at its default the key is left out of the hash (the run trains as before the key
    existed, so earlier results keep their file); any other value is part of it."""
    import dataclasses

    from gnlorp import identity
    from gnlorp.runner import run_identity
    from gnlorp.schema import UNLESS_DEFAULT, setting

    @dataclasses.dataclass
    class Later:
        knob: int = setting(3, "a key added later", identity=UNLESS_DEFAULT)
        other: int = setting(1, "an ordinary key")

    assert identity._added_later(Later, "x.") == {"x.knob": 3}
    cfg = compose(["task=c4", "method=galore", "rank=8", "train.max_steps=2"])
    before = run_identity(cfg, check_config(cfg))  # task.seq_len is an ordinary key here
    real = identity._added_later
    monkeypatch.setattr(identity, "_added_later", lambda schema=identity.RunSettings, prefix="": (
        {**real(schema, prefix), "task.seq_len": 256} if not prefix else real(schema, prefix)))
    at_default = run_identity(cfg, check_config(cfg))
    assert "task.seq_len" not in at_default.settings and "task.seq_len" in before.settings
    without_key = {k: v for k, v in before.settings.items() if k != "task.seq_len"}  # a schema before the key existed
    assert at_default.run_id.rsplit("-", 1)[1] == identity.identity_hash(without_key)
    changed = compose(["task=c4", "method=galore", "rank=8", "train.max_steps=2", "task.seq_len=512"])
    assert run_identity(changed, check_config(changed)).settings["task.seq_len"] == 512
    assert at_default.run_id != run_identity(changed, check_config(changed)).run_id


def test_lr_choice_selection_takes_the_rate_a_grid_chose_and_records_how(tmp_path):
    """Three rates at seed 0 (C4, selection losses 6.5 / 6.3 / 6.4): seed 1 with train.lr_choice=selection trains at
    the second; a later seed-1 run at that rate with a worse selection loss does not change the choice (only the
    seeds every rate has are compared); without a grid, or on a seed that chose, the run is refused, naming the fix."""
    from gnlorp.errors import UserError
    from gnlorp.record import RunRecord
    from gnlorp.runner import learning_rate_choice, run_identity

    base = ["task=c4", "method=galore", "rank=8", "train.max_steps=2", f"results_dir={tmp_path}"]

    def write(seed, factor, selection):
        cfg = compose([*base, f"seed={seed}", f"train.lr_factor={factor}"])
        derived = check_config(cfg)
        ident = run_identity(cfg, derived)
        run_id, settings, resolved = ident.run_id, ident.settings, ident.resolved
        rec = RunRecord(tmp_path, run_id, {**resolved, "derived": derived})
        rec.set_identity(hash=run_id.rsplit("-", 1)[1], settings=settings)
        metrics = {"validation": {"loss": 6.0, "perplexity": 403.4}, "selection": {"loss": selection}}
        rec.add_eval(2, metrics, epoch=1)
        rec.set_best_last({"step": 2, "epoch": 1, "metrics": metrics}, {"step": 2, "epoch": 1, "metrics": metrics})
        rec.write("complete")

    chooser = compose([*base, "seed=1", "train.lr_choice=selection"])
    with pytest.raises(UserError, match="holds no learning-rate grid of this config"):
        learning_rate_choice(chooser, check_config(chooser))
    for factor, selection in ((0.3, 6.5), (1, 6.3), (3, 6.4)):
        write(0, factor, selection)
    recipe = chooser.task.lr["galore"]
    chosen = learning_rate_choice(chooser, check_config(chooser))
    assert chosen["lr"] == pytest.approx(recipe)
    assert chosen["lr_choice"]["grid"] == pytest.approx([0.3 * recipe, recipe, 3 * recipe])
    assert chosen["lr_choice"]["by"] == "selection" and chosen["lr_choice"]["seeds"] == [0]
    write(1, 1, 9.9)  # the chosen rate's seed 1 turns out worse: not compared, the others have no seed 1
    assert learning_rate_choice(chooser, check_config(chooser))["lr"] == pytest.approx(recipe)
    given = compose([*base, "train.lr_factor=3"])
    assert learning_rate_choice(given, check_config(given))["lr_choice"] == {"by": "task.lr.galore", "factor": 3.0}
    selector = compose([*base, "seed=0", "train.lr_choice=selection"])  # the seed that chose cannot be reported
    with pytest.raises(UserError, match=r"seed 0 is one of the seeds that chose the rate .*e\.g\. seed=1\."):
        learning_rate_choice(selector, check_config(selector))
