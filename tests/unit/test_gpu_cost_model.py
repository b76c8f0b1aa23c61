"""make gpu-table's cost model (gnlorp/gpu_table.py): estimates linear in the workload, a plan that follows the
protocol and fits the budget, and one-line refusals of a plan over the budget or of bad input."""

import math

import pytest

from gnlorp import gpu_table as gt


def _workloads():
    yield from (gt.glue_workload(model, task, m, epochs) for model in ("minilm", "roberta-base")
                for task in gt.GLUE_TASKS for m in gt.GLUE_METHODS for epochs in (1, 3))
    yield from (gt.c4_workload(m, steps) for m in gt.C4_METHODS for steps in gt.C4_STEPS)


def test_twice_the_workload_costs_twice_the_seconds():
    for w in _workloads():
        assert gt.run_seconds(w) > 0
        assert gt.run_seconds(w.scaled(2)) == pytest.approx(2 * gt.run_seconds(w)), w
    # and the workload follows the run: twice the epochs of a GLUE task is twice its workload (the projector
    # refreshes, at steps 0, T, 2T, ..., count ceil(steps / T): 70 and 140 steps both refresh once at T = 200)
    for method in ("full", "lora"):
        once, twice = gt.glue_workload("minilm", "rte", method, 1), gt.glue_workload("minilm", "rte", method, 2)
        assert gt.run_seconds(twice) == pytest.approx(2 * gt.run_seconds(once))
    assert [gt.glue_workload("minilm", "rte", "galore", e).refreshes for e in (1, 2, 3)] == [1, 1, 2]
    assert gt.c4_workload("full", 32).train_tokens == 2 * gt.c4_workload("full", 16).train_tokens == 32 * 64 * 256


def test_one_runs_estimate_by_hand():
    """RTE, MiniLM, GaLore, 3 epochs: 2240 trained rows, 70 steps an epoch, 2 refreshes at T = 200."""
    w = gt.glue_workload("minilm", "rte", "galore", 3)
    assert (w.steps, w.refreshes) == (210, 2)
    by_hand = 3 * 2240 * 74.1 / 150_000 + 210 * 0.035 + 2 * 0.3 + 3 * 34_201 / 450_000
    assert gt.run_seconds(w) == pytest.approx(by_hand)


def test_the_chosen_plan_follows_the_protocol_and_fits_nine_minutes():
    plan = gt.choose_plan()
    assert plan.total_s <= 9 * 60 and plan.budget_s == 9 * 60
    assert plan.glue_tasks and plan.c4_steps * gt.C4_BATCH <= gt.C4_BLOCKS   # some GLUE; C4 at most one pass
    assert len(plan.grid) >= 3 and len(plan.seeds) >= 3 and gt.SELECTION_SEED not in plan.seeds
    names = [p.name for p in plan.parts]
    assert names == ["glue grid", "glue seeds", "c4 grid", "c4 seeds"]
    runs = {p.name: len(p.runs) for p in plan.parts}
    assert runs == {"glue grid": 4 * 3 * len(plan.glue_tasks), "glue seeds": 4 * 3 * len(plan.glue_tasks),
                    "c4 grid": len(gt.C4_METHODS) * 3, "c4 seeds": len(gt.C4_METHODS) * 3}
    # the total: the slower lane (parts in sequence), slowed for sharing the GPU, and the tables
    lanes = {"glue": sum(p.seconds for p in plan.parts[:2]), "c4": sum(p.seconds for p in plan.parts[2:])}
    assert plan.total_s == pytest.approx(gt.CONTENTION * max(lanes.values()) + gt.TABLES_S)
    part = plan.parts[2]
    assert part.seconds == pytest.approx(gt.PROCESS_S + 3 * sum(
        gt.START_S + gt.run_seconds(gt.c4_workload(m, plan.c4_steps)) for m in gt.C4_METHODS))
    # the largest that fits: one more task, or one more epoch, would not
    tasks = list(gt.GLUE_TASKS)
    if len(plan.glue_tasks) < len(tasks):
        bigger = gt.Plan(plan.model, tuple(tasks[:len(plan.glue_tasks) + 1]), gt.GLUE_EPOCHS[-1], gt.C4_STEPS[-1])
        assert bigger.total_s > gt.BUDGET_S
    if plan.epochs < max(gt.GLUE_EPOCHS):
        assert gt.Plan(plan.model, plan.glue_tasks, plan.epochs + 1, gt.C4_STEPS[-1]).total_s > gt.BUDGET_S


def test_a_larger_budget_affords_more():
    small, large = gt.choose_plan(budget_s=540), gt.choose_plan(budget_s=3600)
    assert len(large.glue_tasks) > len(small.glue_tasks) and large.total_s <= 3600


def test_the_plan_is_printed_and_a_plan_over_the_budget_refused(capsys):
    gt.main(["--plan-only"])
    out = capsys.readouterr().out
    assert out.startswith("plan: GLUE stsb") and "estimate c4 seeds" in out
    total = float(out.split("estimate: total ")[1].split()[0])
    assert total <= 540
    with pytest.raises(SystemExit) as exc:
        gt.main(["--plan-only", "--tasks", "rte,sst2"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the plan's estimate") and "exceeds the budget of 540 s" in err[0]
    assert "estimate: total" in captured.out  # the estimate is shown before the refusal


@pytest.mark.parametrize("args, says", [
    (["--tasks", "qqp"], "--tasks 'qqp'"), (["--epochs", "0"], "--epochs 0"), (["--c4-steps", "40"], "--c4-steps 40"),
    (["--budget-s", "-1"], "--budget-s -1"), (["--model", "gpt2"], "invalid choice"),
    (["--c4-methods", "full,dora"], "--c4-methods 'full,dora'"), (["--c4-methods", "fira,fira"], "--c4-methods"),
    (["--budget-s", "60"], "exceeds the budget of 60 s")])
def test_bad_input_is_one_line_and_exit_2(capsys, args, says):
    with pytest.raises(SystemExit) as exc:
        gt.main(["--plan-only", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_the_c4_lane_has_sweeps_paper_c4_methods_and_their_projector_costs():
    """APOLLO, APOLLO-Mini and Fira in the C4 lane (sweeps/gpu_c4.yaml's list): Fira refreshes its projector by an
    SVD like GaLore; APOLLO's projector is redrawn from its seed (no SVD), so no refresh cost."""
    import yaml

    from conftest import ROOT

    sweep = yaml.safe_load((ROOT / "sweeps" / "gpu_c4.yaml").read_text())
    assert tuple(sweep["hydra"]["sweeper"]["params"]["method"].split(",")) == gt.C4_METHODS
    paper = yaml.safe_load((ROOT / "sweeps" / "paper_c4.yaml").read_text())
    assert set(paper["hydra"]["sweeper"]["params"]["method"].split(",")) == set(gt.C4_METHODS)
    assert {"apollo", "apollo_mini", "fira"} <= set(gt.C4_METHODS)
    assert [gt.c4_workload(m, 32).refreshes for m in ("galore", "fira", "apollo", "apollo_mini")] == [4, 4, 0, 0]
    for m in ("apollo", "apollo_mini", "fira"):  # a projected step costs at least GaLore's
        assert gt.run_seconds(gt.c4_workload(m, 32)) >= gt.run_seconds(gt.c4_workload("galore", 32)) - 4 * 0.5
    # a subset of the lane: fewer runs, the same per-run estimates
    sub = gt.Plan("minilm", ("stsb",), 1, 8, c4_methods=("full", "fira"))
    assert [len(p.runs) for p in sub.parts if p.lane == "c4"] == [2 * 3, 2 * 3]
    assert "method=full,fira" in sub.parts[-1].overrides


def test_c4_methods_option_runs_a_subset(capsys):
    gt.main(["--plan-only", "--c4-methods", "full,apollo_mini,fira"])
    out = capsys.readouterr().out
    assert "x full, apollo_mini, fira; lr grid" in out and " 9 runs" in out


def test_c4_overrides_keep_four_subspaces():
    ov = dict(o.split("=") for o in gt.c4_overrides(32))
    assert ov["train.max_steps"] == ov["train.eval_every"] == "32" and ov["per_task.update_proj_gap"] == "8"
    assert int(ov["per_task.relora_restart_warmup"]) < int(ov["per_task.relora_reset_every"])
    assert math.ceil(32 / int(ov["per_task.update_proj_gap"])) == 4


def test_a_hub_model_offline_without_a_local_copy_is_refused_before_any_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # as on the GPU machine: not a dry run
    with pytest.raises(SystemExit) as exc:
        gt.main(["--model", "roberta-base", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FacebookAI/roberta-base" in err[0] and "HF_HUB_OFFLINE=1" in err[0]
    assert not (tmp_path / "out").exists()  # nothing started
