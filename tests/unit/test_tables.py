"""`make tables` (gnlorp.tables.build_tables) on a folder of small result files written by the real RunRecord:
exact Markdown cells (medians and spreads computed by hand below), left-out and unreadable files named, paper cells
never filled in, and byte-identical outputs (PNGs included) when run twice."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gnlorp import tables
from gnlorp.record import RunRecord

CLOCK = lambda: datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)  # noqa: E731


def _config(family, task, model, method, rank, precision, seed, **extra):
    cfg = {
        "task": {"family": family, "name": task, "max_length": 128, "max_train_samples": extra.get("subset")},
        "model": {"name": model},
        "method": {"name": method, "rank": rank},
        "precision": {"name": precision},
        "seed": seed,
        "train": {"epochs": extra.get("epochs", 3), "batch_size": 32},
        "derived": {"lr": extra.get("lr", 3e-4)},
    }
    return cfg


def write_glue(results: Path, task, method, rank, seed, best, last=None, *, model="minilm", status="complete",
               dirty=False, precision="fp32", steps=20, baseline=None):
    """One GLUE result file. `best`/`last`: {split: {metric: value}}."""
    rank = rank if method != "full" else None
    name = f"glue-{task}-{model}-{method}{'' if rank is None else f'-r{rank}'}-{precision}-s{seed}"
    rec = RunRecord(results, name, _config("glue", task, model, method, rank, precision, seed, subset=1000), clock=CLOCK)
    rec.git = {"sha": "0" * 40, "dirty": dirty}
    for step in range(1, steps + 1):
        rec.add_loss(step, 1.0 - 0.02 * step + 0.01 * seed + 0.05 * tables.METHOD_ORDER.index(method), 1e-4)
    last = last or best
    rec.add_eval(steps // 2, best, epoch=1)
    rec.add_eval(steps, last, epoch=2)
    rec.set_best_last({"step": steps // 2, "epoch": 1, "metrics": best}, {"step": steps, "epoch": 2, "metrics": last})
    rec.set_train(steps=steps, tokens=1000 * steps)
    if baseline is not None:
        rec.set_baseline({"kind": "the best constant prediction", "metrics": baseline})
    rec.write(status)
    return name


def write_c4(results: Path, model, method, rank, seed, ppl, *, precision="bf16", history=None, steps=16, status="complete"):
    rank = rank if method != "full" else None
    name = f"c4-{model}-{method}{'' if rank is None else f'-r{rank}'}-{precision}-s{seed}"
    rec = RunRecord(results, name, _config("c4", "c4", model, method, rank, precision, seed), clock=CLOCK)
    rec.git = {"sha": "0" * 40, "dirty": False}
    for step in range(1, steps + 1):
        rec.add_loss(step, 10.0 - 0.3 * step + 0.1 * tables.METHOD_ORDER.index(method), 1e-3)
    for step, value in (history or {steps: ppl}).items():
        rec.add_eval(step, {"validation": {"loss": 1.0, "perplexity": value}}, epoch=1)
    final = {"validation": {"loss": 1.0, "perplexity": ppl}}
    rec.set_best_last({"step": steps, "epoch": 1, "metrics": final}, {"step": steps, "epoch": 1, "metrics": final})
    rec.set_train(steps=steps, tokens=2048 * steps)
    rec.write(status)
    return name


def acc(v):
    return {"validation": {"accuracy": v}}


@pytest.fixture(scope="module", autouse=True)
def fixed_sysinfo():
    """RunRecord asks git, importlib.metadata and torch about the machine: fixed answers keep the files small,
    fast and identical everywhere (the tests set git.dirty themselves)."""
    from gnlorp import sysinfo

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sysinfo, "git_info", lambda *a, **k: {"sha": "0" * 40, "dirty": False})
        mp.setattr(sysinfo, "package_versions", lambda: {"python": "3"})
        mp.setattr(sysinfo, "device_info", lambda: {"type": "cpu"})
        yield


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("results")
    # CoLA (Matthews corr.): best epoch differs from the last one; the table must use `best`
    for seed, (b, l) in enumerate([(0.50, 0.40), (0.52, 0.50), (0.56, 0.10)]):
        write_glue(d, "cola", "full", None, seed, {"validation": {"matthews_correlation": b}},
                   {"validation": {"matthews_correlation": l}})
    for seed, b in enumerate([0.40, 0.45]):
        write_glue(d, "cola", "lora", 8, seed, {"validation": {"matthews_correlation": b}})
    write_glue(d, "cola", "lora", 8, 2, {"validation": {"matthews_correlation": 0.99}}, status="incomplete")
    for seed, b in enumerate([0.55, 0.60, 0.58]):
        write_glue(d, "cola", "gradnormlorp", 8, seed, {"validation": {"matthews_correlation": b}})
    # MRPC: F1 is the headline, accuracy is not
    for seed, f1 in enumerate([0.88, 0.90, 0.89]):
        write_glue(d, "mrpc", "full", None, seed, {"validation": {"accuracy": 0.70, "f1": f1}})
    for seed, f1 in enumerate([0.85, 0.86]):
        write_glue(d, "mrpc", "lora", 8, seed, {"validation": {"accuracy": 0.70, "f1": f1}})
    for seed, f1 in enumerate([0.90, 0.91, 0.87]):
        write_glue(d, "mrpc", "gradnormlorp", 8, seed, {"validation": {"accuracy": 0.70, "f1": f1}})
    write_glue(d, "mrpc", "gradnormlorp", 8, 3, {"validation": {"accuracy": 0.70, "f1": 0.20}}, dirty=True)
    write_glue(d, "mrpc", "galore", 8, 0, {"validation": {"accuracy": 0.70, "f1": 0.50}}, status="failed")
    # WNLI: one run, in the table but not in the average
    write_glue(d, "wnli", "full", None, 0, acc(0.5634))
    # another model: its own table
    write_glue(d, "rte", "lora", 4, 0, acc(0.55), model="bert_tiny")
    # C4: a CPU size, a paper size and 7B with an eval history
    write_c4(d, "llama_20m", "full", None, 0, 120.0)
    write_c4(d, "llama_20m", "galore", 64, 0, 130.0)
    write_c4(d, "llama_20m", "galore", 64, 1, 131.0)
    write_c4(d, "llama_20m", "gradnormlorp", 64, 0, 128.25)
    write_c4(d, "llama_60m", "full", None, 0, 35.10)
    write_c4(d, "llama_7b", "galore", 1024, 0, 15.9, precision="8bit", steps=80000,
             history={40000: 18.5, 80000: 15.9})
    # files load_results cannot use
    (d / "broken.json").write_text("{not json")
    (d / "empty.json").write_text("")
    return d


@pytest.fixture(scope="module")
def memory_rows():
    from gnlorp.memory import llama_memory_table

    return llama_memory_table(sizes=("llama_60m",), ranks=(128,))


@pytest.fixture(scope="module")
def built(results, memory_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    paths = tables.build_tables(results, out, memory_rows=memory_rows)
    return out, paths


def _rows(md: str) -> dict[str, list[list[str]]]:
    """Rows of the first Markdown table, keyed by 'label | source'."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if not cells or cells[0] in ("task",):
            break
        out[f"{cells[0]} | {cells[1]}"] = cells[2:]
    return out


def _header(md: str) -> list[str]:
    return [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("|")).strip("|").split("|")]


def test_writes_one_table_per_model_and_scale_and_the_plots(built):
    out, paths = built
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "c4_llama_7b.md", "c4_llama_7b.tex", "c4_other-sizes.md", "c4_other-sizes.tex", "c4_paper-sizes.md",
        "c4_paper-sizes.tex", "glue_bert_tiny.md", "glue_bert_tiny.tex", "glue_minilm.md", "glue_minilm.tex",
        "glue_minilm_differences.md", "glue_minilm_differences.tex", "index.md", "loss_c4_llama_20m.png", "loss_c4_llama_60m.png", "loss_c4_llama_7b.png",
        "dev_glue_bert_tiny_rte.png", "dev_glue_minilm_cola.png", "dev_glue_minilm_mrpc.png",
        "dev_glue_minilm_wnli.png", "memory.md", "memory.png", "memory.tex",
    ])
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_glue_cells_are_best_epoch_median_and_half_range(built):
    md = (built[0] / "glue_minilm.md").read_text()
    assert _header(md) == ["Method", "Source", "CoLA", "MRPC", "WNLI", "avg"]
    rows = _rows(md)
    # CoLA full best: 50, 52, 56 -> median 52, half-range 3 (the last epochs 40/50/10 are not used)
    # MRPC full F1: 88, 90, 89 -> 89 ± 1; WNLI one run 56.34; avg over CoLA and MRPC (no WNLI): (52 + 89) / 2
    assert rows["Full fine-tuning | ours (1–3 runs)"] == ["52.00 ± 3.00", "89.00 ± 1.00", "56.34", "70.50"]
    # LoRA: CoLA 40, 45 (the incomplete seed 2 is left out) -> 42.50 ± 2.50; MRPC 85, 86 -> 85.50 ± 0.50
    assert rows["LoRA (rank 8) | ours (2 runs)"] == ["42.50 ± 2.50", "85.50 ± 0.50", "—", "64.00"]
    # GradNormLoRP: CoLA 55, 60, 58 -> 58 ± 2.5; MRPC 90, 91, 87 -> 90 ± 2 (the dirty seed 3, F1 20, left out)
    assert rows["GradNormLoRP (rank 8) | ours (3 runs)"] == ["58.00 ± 2.50", "90.00 ± 2.00", "—", "74.00"]


def test_glue_paper_rows_sit_beside_ours_and_are_never_filled_in(built):
    md = (built[0] / "glue_minilm.md").read_text()
    rows = _rows(md)
    # GaLore Table 4, only for (method, rank) rows we have; no WNLI number and no average over other tasks
    assert rows["Full fine-tuning | paper (GaLore Table 4)"] == ["62.24", "91.30", "—", "—"]
    assert rows["LoRA (rank 8) | paper (GaLore Table 4)"] == ["61.83", "91.90", "—", "—"]
    # the GradNormLoRP abstract gives only 8-task averages: nothing to show in this table's columns
    assert not any("GradNormLoRP abstract" in k for k in rows)
    assert not any("rank 4" in k for k in rows)
    order = list(rows)
    assert order.index("Full fine-tuning | paper (GaLore Table 4)") == order.index("Full fine-tuning | ours (1–3 runs)") + 1
    assert "best validation score over the epochs" in md and "median over seeds ± half the range" in md


def test_glue_average_of_the_paper_shown_only_for_the_same_eight_tasks(tmp_path):
    res = tmp_path / "r"
    for task in tables.PAPER_AVG_TASKS:
        split = "validation_matched" if task == "mnli" else "validation"
        metric = tables.HEADLINE[task][1]
        for method in ("gradnormlorp", "lora"):
            write_glue(res, task, method, 8, 0, {split: {metric: 0.8}}, model="roberta-base", precision="bf16")
    tables.build_tables(res, tmp_path / "t", memory=False)
    rows = _rows((tmp_path / "t" / "glue_roberta-base.md").read_text())
    assert rows["GradNormLoRP (rank 8) | ours (1 run)"][-1] == "80.00"
    assert rows["GradNormLoRP (rank 8) | paper (GradNormLoRP abstract)"] == ["—"] * 8 + ["80.65"]
    assert rows["LoRA (rank 8) | paper (GradNormLoRP abstract)"] == ["—"] * 8 + ["79.23"]
    assert rows["LoRA (rank 8) | paper (GaLore Table 4)"] == [
        "61.83", "90.80", "91.90", "79.06", "93.46", "86.94", "92.25", "91.22", "85.93"]


def test_left_out_and_unreadable_files_are_named(built):
    out = built[0]
    index = (out / "index.md").read_text()
    assert "`glue-cola-minilm-lora-r8-fp32-s2` (glue-cola-minilm-lora-r8-fp32-s2.json): incomplete" in index
    assert "`glue-mrpc-minilm-gradnormlorp-r8-fp32-s3`" in index and "git.dirty" in index
    assert "`glue-mrpc-minilm-galore-r8-fp32-s0`" in index and "failed" in index
    assert "- broken.json: invalid JSON" in index and "- empty.json: empty file" in index
    glue = (out / "glue_minilm.md").read_text()
    assert "## Left out" in glue and "glue-cola-minilm-lora-r8-fp32-s2" in glue
    assert not any(k.startswith("GaLore") for k in _rows(glue))  # the failed GaLore run makes no row
    assert str(built[0].parent) not in index  # file names only, no machine-specific paths


def test_allow_dirty_includes_and_marks_dirty_runs(results, tmp_path):
    tables.build_tables(results, tmp_path, memory=False, allow_dirty=True)
    rows = _rows((tmp_path / "glue_minilm.md").read_text())
    # MRPC F1 90, 91, 87, 20 -> median 88.5, half-range 35.5
    assert rows["GradNormLoRP (rank 8) | ours (3–4 runs)"][1] == "88.50 ± 35.50†"


def test_c4_tables_per_scale(built):
    out = built[0]
    rows = _rows((out / "c4_other-sizes.md").read_text())
    assert rows["Full-Rank | ours (1 run)"] == ["120.00"]
    assert rows["GaLore | ours (2 runs)"] == ["130.50 ± 0.50"]
    assert rows["GradNormLoRP | ours (1 run)"] == ["128.25"]
    assert rows["rank r | ours"] == ["64"]
    assert rows["training tokens | ours"] == ["32,768"]
    assert not any("paper" in k for k in rows)

    paper = (out / "c4_paper-sizes.md").read_text()
    assert _header(paper) == ["Method", "Source", "60M"]
    rows = _rows(paper)
    assert rows["Full-Rank | ours (1 run)"] == ["35.10"]
    assert rows["Full-Rank | paper (GaLore Table 2)"] == ["34.06 (0.36G)"]
    assert rows["rank r | paper (GaLore Table 2)"] == ["128"] and rows["training tokens | paper (GaLore Table 2)"] == ["1.1B"]
    assert "The papers have no model of these sizes" not in paper and "Other paper rows" not in paper

    seven = (out / "c4_llama_7b.md").read_text()
    assert _header(seven) == ["Method", "Source", "40K steps", "80K steps", "120K steps", "150K steps"]
    rows = _rows(seven)
    assert rows["8-bit GaLore | ours (1 run)"] == ["18.50", "15.90", "—", "—"]
    assert rows["8-bit GaLore | paper (GaLore Table 3 (r=1024, 18G weights + states))"] == ["17.94", "15.39", "14.95", "14.65"]


def test_c4_paper_table_shows_apollo_and_fira_beside_their_own_papers_rows(tmp_path):
    """APOLLO, APOLLO-Mini and Fira runs at paper sizes: each with its own paper's published row (not GaLore's), at
    the sizes of the table's columns, labelled with its source; a note names those sources."""
    from gnlorp.tables.published import APOLLO_C4, FIRA_C4

    results = tmp_path / "results"
    write_c4(results, "llama_60m", "full", None, 0, 35.10)
    write_c4(results, "llama_60m", "fira", 128, 0, 31.5)
    write_c4(results, "llama_1b", "fira", 512, 0, 14.6)
    write_c4(results, "llama_130m", "apollo", 192, 0, 23.2)
    write_c4(results, "llama_60m", "apollo_mini", None, 0, 32.4)
    out = tmp_path / "tables"
    tables.build_tables(results, out, memory=False)
    md = (out / "c4_paper-sizes.md").read_text()
    assert _header(md) == ["Method", "Source", "60M", "130M", "1B"]
    rows = _rows(md)
    assert rows["Full-Rank | paper (GaLore Table 2)"] == ["34.06 (0.36G)", "25.08 (0.76G)", "15.56 (7.80G)"]
    assert rows["Fira | ours (1 run)"] == ["31.50", "—", "14.60"]
    assert rows[f"Fira | paper ({FIRA_C4})"] == ["31.06", "22.73", "14.31"]  # Fira's own paper (350M: 16.85)
    assert rows["APOLLO | ours (1 run)"] == ["—", "23.20", "—"]
    assert rows[f"APOLLO | paper ({APOLLO_C4})"] == ["31.55", "22.94", "14.20"]
    assert rows[f"APOLLO-Mini | paper ({APOLLO_C4})"] == ["31.93", "23.53", "14.17"]
    assert FIRA_C4.startswith("Fira paper, arXiv 2410.01623") and APOLLO_C4.startswith("APOLLO paper, arXiv 2412.05270")
    assert not any(k.startswith(("Fira", "APOLLO")) and "GaLore" in k for k in rows)
    assert f"({APOLLO_C4} / {FIRA_C4})" in md  # the note: which papers' tables these rows come from
    assert sum("paper (" in k for k in rows) == 3 + 3  # GaLore Table 2: Full-Rank, rank r, tokens; the three methods
    from gnlorp.tables.published import MEMORY_DEFINITION, PAPER_C4

    assert MEMORY_DEFINITION[FIRA_C4] == "parameters + gradients + optimizer states"
    assert MEMORY_DEFINITION[APOLLO_C4] == "optimizer states only"
    assert {p.method: p.values["llama_350m"] for p in PAPER_C4 if p.source in (FIRA_C4, APOLLO_C4)} == \
        {"fira": 16.85, "apollo": 16.85, "apollo_mini": 17.18}


def test_memory_table_at_paper_ranks_with_published_cells(built, memory_rows):
    md = (built[0] / "memory.md").read_text()
    assert _header(md) == ["Method", "States", "Source", "60M (r=128)"]
    by = {(r["method"], r["state_bits"], r["optim_library"]): r for r in memory_rows if r["rank"] in (None, 128)}
    assert {m for m, _, _ in by} == set(tables.METHOD_ORDER)  # every registered method, DoRA and APOLLO included
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    for (method, bits, library), r in by.items():
        label = tables.method_label(method, "memory")
        cell = f"{r['state_bytes'] / 1e9:.2f} GB ({100 * r['saving_vs_bf16_adamw']:.1f}%)"
        states = f"{bits}-bit" + (f" ({library})" if library else "")
        assert f"| {label} | {states} | ours (analytic) | {cell} |" in lines
    assert "| AdamW | 16-bit | ours (analytic) | 0.23 GB (0.0%) |" in lines
    assert "| AdamW | 4-bit (torchao) | ours (analytic) | 0.06 GB (73.4%) |" in lines
    assert "| GaLore | 16-bit | paper (GaLore Table 6, states only) | 0.13 GB |" in lines
    assert not any(ln.startswith("| GradNormLoRP | 16-bit | paper") for ln in lines)  # the paper gives none
    claims = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ") for ln in lines if "abstract" in ln or "APOLLO LLaMA" in ln}
    assert claims["8-bit GradNormLoRP: optimizer memory reduced by up to"][1:] == [
        "GradNormLoRP abstract", tables.published.MEMORY_DEFINITION["GradNormLoRP abstract"], "89.5%", "—", "— |"]
    assert claims["APOLLO, LLaMA-7B r=256: optimizer memory"][2:4] == [
        "optimizer states only (projected moments of the target matrices)", "1.6 GB"]
    notes = md.split("## ")[0]
    assert "What is counted" in notes and "optimizer states only" in notes and "weights, gradients and activations not" in notes


def test_outputs_are_byte_identical_when_run_twice(results, memory_rows, built, tmp_path):
    first_dir, first = built
    (tmp_path / "again").mkdir()
    for p in first:  # the second run writes over previous outputs (changed ones: each file must be rewritten)
        (tmp_path / "again" / p.name).write_bytes(b"previous " + p.name.encode())
    again = tables.build_tables(results, tmp_path / "again", memory_rows=memory_rows)
    assert [p.name for p in again] == [p.name for p in first]
    for p in again:
        assert p.read_bytes() == (first_dir / p.name).read_bytes(), p.name


def test_stale_outputs_are_removed_and_other_files_kept(results, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "glue_gone.md").write_text("old")
    (out / "my_notes.txt").write_text("mine")
    tables.build_tables(results, out, memory=False)
    assert not (out / "glue_gone.md").exists() and (out / "my_notes.txt").read_text() == "mine"


def test_cli_writes_into_out(results, tmp_path, capsys):
    tables.main(["--results", str(results), "--out", str(tmp_path / "cli"), "--no-memory"])
    text = capsys.readouterr().out
    assert "tabulated" in text and (tmp_path / "cli" / "glue_minilm.md").exists()
    assert not (tmp_path / "cli" / "memory.md").exists()


def test_a_real_run_record_is_tabulated(tmp_path):
    """The record the runner writes (its config composed by Hydra) fits the table's reader."""
    from omegaconf import OmegaConf

    from conftest import compose

    cfg = compose(["experiment=glue_minilm_cpu", "task=glue/mrpc", "method=gradnormlorp", "seed=1"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["derived"] = {"lr": 3e-4}
    from gnlorp.runner import run_name

    rec = RunRecord(tmp_path / "r", run_name(cfg), resolved, clock=CLOCK)
    rec.git = {"sha": None, "dirty": False}
    m = {"validation": {"accuracy": 0.75, "f1": 0.8125}}
    rec.add_eval(10, m, epoch=1)
    rec.set_best_last({"step": 10, "epoch": 1, "metrics": m}, {"step": 10, "epoch": 1, "metrics": m})
    rec.write("complete")
    tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "glue_minilm.md").read_text()
    assert _rows(md)["GradNormLoRP (rank 8) | ours (1 run)"] == ["81.25", "81.25"]
    assert "| MRPC | 2 | 32 | 128 | all | 1 | gradnormlorp 0.0003 |" in md   # every train row but the held-out ones


@pytest.mark.slow
def test_full_memory_table_against_published_claims(tmp_path):
    from gnlorp.memory import llama_memory_table

    rows = llama_memory_table()
    t = tables.memory_tables(rows)
    md = t.markdown()
    claims = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if "abstract" in ln or "§5.5" in ln}
    galore16 = claims["GaLore, 16-bit, LLaMA-7B r=1024: optimizer-state saving"]
    ours = float(galore16.split(" | ")[4].removesuffix(" (r=1024)").rstrip("%"))
    assert 64.0 < ours < 66.0  # GaLore §5.5: 65.5%
    assert "| 7B (r=1024) |" in md.splitlines()[2]
    tables.memory_plot(tmp_path / "m.png", rows)
    assert (tmp_path / "m.png").stat().st_size > 20000


def test_peak_table_is_make_peak_memorys_files_with_the_gaps_computed_from_them(tmp_path):
    mib = 1024**2

    def row(model, method, rank, measured, predicted, default):
        return {"model": model, "method": method, "rank": rank, "batch": 4, "seq_len": 256, "steps": 3,
                "measured_bytes": measured * mib, "predicted_bytes": predicted * mib,
                "relative_error": (predicted - measured) / measured, "measured_default_malloc_bytes": default * mib,
                "default_malloc_retention_bytes": (default - measured) * mib, "breakdown": {"peak_phase": "backward_head"}}

    device = {"name": "Some CPU", "type": "cpu", "torch_threads": 1}
    for model, rows in (("llama_60m", [row("llama_60m", "galore", 128, 1000, 970, 1100)]),
                        ("llama_20m", [row("llama_20m", "fira", 64, 500, 490, 600), row("llama_20m", "full", None, 400, 380, 420),
                                       row("llama_20m", "apollo_mini", 64, 450, 445, 460)])):
        (tmp_path / f"peak_{model}.json").write_text(json.dumps({"rows": rows, "device": device, "git": {"sha": "abcdef0123"}}))
    (tmp_path / "other.json").write_text("{}")  # not a peak file: ignored
    t = tables.peak_table(tmp_path)
    assert [r[:3] for r in t.rows] == [["20M", "AdamW", "—"], ["20M", "APOLLO-Mini", "1"], ["20M", "Fira", "64"],
                                       ["60M", "GaLore", "128"]]  # APOLLO-Mini trains at rank 1 whatever rank= says
    assert t.rows[0][3:7] == ["400.0", "380.0", "−5.0%", "420.0"]
    notes = " ".join(t.notes)
    assert "by 5.0–30.0 MiB" in notes and "another 2–20%" in notes  # 450-445 .. 1000-970; 10/450 .. 100/500
    assert "Some CPU (cpu, 1 thread), at abcdef0" in notes
    assert tables.peak_table(tmp_path / "none") is None


@pytest.mark.slow
def test_committed_tables_are_what_make_tables_builds_from_the_committed_results(tmp_path):
    """`make tables` on results/ regenerates results/tables/ byte for byte: Markdown and LaTeX always, the PNGs too
    with the matplotlib that constraints.txt pins (their bytes depend on its version; with another, names only)."""
    import re

    import matplotlib

    root = Path(__file__).resolve().parents[2] / "results"
    written = tables.build_tables(root, tmp_path)
    committed = sorted(p.name for p in (root / "tables").iterdir())
    assert sorted(p.name for p in written) == committed, "rerun `make tables` and commit results/tables/"
    pinned = re.search(r"^matplotlib==(\S+)$", (root.parent / "constraints.txt").read_text(), re.M)
    suffixes = {".md", ".tex"} | ({".png"} if pinned and pinned.group(1) == matplotlib.__version__ else set())
    for p in written:
        if p.suffix in suffixes:
            assert p.read_bytes() == (root / "tables" / p.name).read_bytes(), f"{p.name}: rerun `make tables`"
    # results/README.md: the template's prose with these tables inserted, byte for byte
    from gnlorp.tables import results_readme

    assert results_readme.render(tmp_path) == (root / "README.md").read_text(encoding="utf-8"), \
        "results/README.md: rerun `make tables` (edit gnlorp/tables/results_readme.md, not the generated file)"
    guide = root.parent / "README.md"
    assert results_readme.guide_section(guide, tmp_path) == guide.read_text(encoding="utf-8"), \
        "README.md's results section: rerun `make tables` (edit gnlorp/tables/readme_results.md)"


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["glue_cpu_subsets", "glue_cpu_2026-12-03"])
def test_archived_tables_are_what_the_command_in_their_readme_builds(tmp_path, folder):
    """An archived folder's tables/ are rebuilt byte for byte by the command its README names (they had drifted
    from the table code once, unnoticed, because nothing rebuilt them)."""
    root = Path(__file__).resolve().parents[2] / "results" / folder
    command = f"python -m gnlorp.tables --results results/{folder} --out results/{folder}/tables --no-memory"
    assert command in " ".join((root / "README.md").read_text(encoding="utf-8").split()), "the README names another command"
    written = tables.build_tables(root, tmp_path, memory=False)
    assert sorted(p.name for p in written) == sorted(p.name for p in (root / "tables").iterdir())
    for p in written:
        if p.suffix in (".md", ".tex"):
            assert p.read_bytes() == (root / "tables" / p.name).read_bytes(), f"{folder}/tables/{p.name}: run `{command}`"


def test_the_cpu_glue_table_reports_no_cell_that_fails_to_clear_its_trivial_baseline():
    """The CPU GLUE set is designed so that every method's median clears its task's trivial baseline by the ‡ rule's
    margin (sweeps/cpu_glue.yaml); a task that does not is dropped, never reported at chance."""
    md = (Path(__file__).resolve().parents[2] / "results" / "tables" / "glue_minilm.md").read_text()
    ours = [line for line in md.splitlines() if "| ours (" in line]
    assert len(ours) == 4 and not any("‡" in line for line in ours), ours


def test_results_readme_inserts_the_named_tables_and_refuses_a_missing_one(tmp_path):
    """A `<!-- table: NAME.md -->` line becomes the table part of NAME.md (headings two levels down, its list of
    left-out runs stays in the file, which is linked); every other template line is copied; a missing table is named."""
    from gnlorp.errors import UserError
    from gnlorp.tables import results_readme

    (tmp_path / "t.md").write_text("# Title\n\n| a |\n|---|\n| 1 |\n\n- note\n\n## Left out\n\n- run-x\n")
    template = tmp_path / "template.md"
    template.write_text("# Results\n\nprose 1.5\n\n<!-- table: t.md -->\n\nend\n")
    text = results_readme.render(tmp_path, template)
    assert text.startswith(results_readme.HEADER + "\n\n# Results\n\nprose 1.5\n\n### Title\n\n| a |\n|---|\n| 1 |\n")
    assert "- note" in text and "run-x" not in text and "Left out" not in text and "](tables/t.md)" in text
    assert text.endswith("\nend\n") and results_readme.render(tmp_path, template) == text
    template.write_text("<!-- table: missing.md -->\n")
    with pytest.raises(UserError, match="missing.md"):
        results_readme.render(tmp_path, template)


def test_results_readme_quotes_a_cell_of_a_generated_table_and_refuses_one_it_lacks(tmp_path):
    from gnlorp.errors import UserError
    from gnlorp.tables import results_readme

    (tmp_path / "d.md").write_text("# D\n\n| Difference | x | verdict |\n|---|---:|---:|\n| A − B | +1.00 [+0.10, +1.90] | ahead |\n")
    template = tmp_path / "template.md"
    template.write_text("A against B: [[d.md | A − B | verdict]], [[ d.md|A − B|x ]].\n")
    assert results_readme.render(tmp_path, template).endswith("\nA against B: ahead, +1.00 [+0.10, +1.90].\n")
    for bad in ("[[d.md | A − C | verdict]]", "[[d.md | A − B | p]]"):
        template.write_text(bad + "\n")
        with pytest.raises(UserError, match="has no such cell"):
            results_readme.render(tmp_path, template)


def test_results_readme_lists_our_rows_without_the_source_column_and_rewrites_only_the_guide_section(tmp_path):
    from gnlorp.errors import UserError
    from gnlorp.tables import results_readme

    (tmp_path / "t.md").write_text("# T\n\n| Method | Source | x |\n|---|---|---:|\n| A | ours (2 runs) | 1.00 |\n"
                                   "| A | paper (Table 4) | 2.00 |\n")
    template = tmp_path / "template.md"
    template.write_text("<!-- ours: t.md -->\n")
    assert results_readme.render(tmp_path, template, header=False) == "| Method | x |\n|---|---:|\n| A | 1.00 |\n"
    guide = tmp_path / "README.md"
    guide.write_text(f"# G\n\nintro\n{results_readme.GUIDE_BEGIN}\nold rows\n{results_readme.GUIDE_END}\n\n## Next\n")
    text = results_readme.guide_section(guide, tmp_path, template)
    assert text == (f"# G\n\nintro\n{results_readme.GUIDE_BEGIN}\n| Method | x |\n|---|---:|\n| A | 1.00 |\n"
                    f"{results_readme.GUIDE_END}\n\n## Next\n")
    guide.write_text("# G\n")
    with pytest.raises(UserError, match="has no section between"):
        results_readme.guide_section(guide, tmp_path, template)


def test_runs_with_other_training_settings_are_never_pooled(tmp_path):
    """An lr sweep writes two results of the same method, rank and seed: two rows, each naming its lr."""
    from gnlorp.record import RunRecord

    for lr, value in ((1e-4, 0.60), (3e-3, 0.70)):
        for seed in (0, 1):
            settings = {"train.lr": lr, "method.name": "galore", "rank": 8, "seed": seed}
            cfg = _config("glue", "rte", "minilm", "galore", 8, "fp32", seed, lr=lr)
            rec = RunRecord(tmp_path / "r", f"glue-rte-minilm-galore-r8-fp32-s{seed}-{lr:g}", cfg, clock=CLOCK)
            rec.set_identity(hash=f"{lr:g}", settings=settings)
            rec.git = {"sha": "0" * 40, "dirty": False}
            m = acc(value + 0.01 * seed)
            rec.add_eval(10, m, epoch=1)
            rec.set_best_last({"step": 10, "epoch": 1, "metrics": m}, {"step": 10, "epoch": 1, "metrics": m})
            rec.write("complete")
    tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    rows = _rows((tmp_path / "t" / "glue_minilm.md").read_text())
    # medians of (60, 61) and (70, 71) x 100, half-range 0.5: never the median of all four
    assert rows["GaLore (rank 8) [train.lr=0.0001] | ours (2 runs)"][0] == "60.50 ± 0.50"
    assert rows["GaLore (rank 8) [train.lr=0.003] | ours (2 runs)"][0] == "70.50 ± 0.50"


def _c4_grid_run(folder: Path, method: str, lr: float, seed: int, selection: float | None, ppl: float,
                 status: str = "complete", state_bytes: int | None = None):
    from gnlorp.methods import is_low_rank

    rank = 64 if is_low_rank(method) else None  # full, and APOLLO-Mini (its rank is fixed at 1): none
    cfg = _config("c4", "c4", "llama_20m", method, rank, "fp32", seed, lr=lr)
    rec = RunRecord(folder, f"c4-llama_20m-{method}-fp32-s{seed}-{lr:g}", cfg, clock=CLOCK)
    rec.set_identity(hash=f"{lr:g}", settings={"train.lr": lr, "method.name": method, "seed": seed})
    rec.git = {"sha": "0" * 40, "dirty": False}
    metrics = {"validation": {"loss": math.log(ppl), "perplexity": ppl}}
    if selection is not None:
        metrics["selection"] = {"loss": selection, "perplexity": math.exp(selection)}
    if status == "complete":
        for step in (1, 10):
            rec.add_loss(step, 10.0 - 0.3 * step + seed / 100, 1e-3)
        rec.add_eval(10, metrics, epoch=1)
        rec.set_best_last({"step": 10, "epoch": 1, "metrics": metrics}, {"step": 10, "epoch": 1, "metrics": metrics})
    if state_bytes is not None:
        rec.set_memory(optimizer_state_bytes=state_bytes)
    rec.write(status)


def test_a_learning_rate_grid_keeps_the_rate_with_the_lowest_selection_loss(tmp_path):
    """Chosen on the selection slice, not on the reported perplexity: full's 3e-3 has the best reported
    perplexity but not the lowest selection loss; GaLore's best-looking rate failed on one seed, so it is
    never chosen; the grid table lists every point with the choice marked. The table reports only the fresh
    seeds run at the chosen rate (2 and 3), never the selection seeds (0 and 1) that chose it."""
    r = tmp_path / "r"
    for seed, (a, b, c) in enumerate(((6.50, 6.40, 6.45), (6.52, 6.38, 6.47))):
        _c4_grid_run(r, "full", 3e-4, seed, a, 700.0)
        _c4_grid_run(r, "full", 1e-3, seed, b, 650.0 + seed)   # lowest selection loss (median 6.39)
        _c4_grid_run(r, "full", 3e-3, seed, c, 600.0)          # best reported perplexity: not chosen
    _c4_grid_run(r, "galore", 3e-3, 0, 6.30, 610.0)
    _c4_grid_run(r, "galore", 3e-3, 1, 6.31, 611.0)
    _c4_grid_run(r, "galore", 1e-2, 0, 6.10, 590.0)
    _c4_grid_run(r, "galore", 1e-2, 1, None, 1.0, status="failed")  # diverged
    for seed in (2, 3):                                            # fresh seeds at each chosen rate
        _c4_grid_run(r, "full", 1e-3, seed, 6.41, 660.0 + 2 * seed)
        _c4_grid_run(r, "galore", 3e-3, seed, 6.33, 620.0 + seed)
    tables.build_tables(r, tmp_path / "t", memory=False)
    rows = _rows((tmp_path / "t" / "c4_other-sizes.md").read_text())
    assert rows["Full-Rank | ours (2 runs)"][:2] == ["0.001", "665.00 ± 1.00"]   # seeds 2, 3: 664, 666
    assert rows["GaLore | ours (2 runs)"][:2] == ["0.003", "622.50 ± 0.50"]
    grid = (tmp_path / "t" / "c4_other-sizes_lr_grid.md").read_text()
    assert "| Full-Rank | llama_20m | 0.001 | 4 | 6.3900 ± 0.0100 | 657.50 ± 8.00 | **chosen** |" in grid
    assert "| GaLore | llama_20m | 0.01 | 2 | 6.1000 | 590.00 |  (seed 1 failed) |" in grid
    index = (tmp_path / "t" / "index.md").read_text()
    chosen = "(lr 0.001 chosen from {0.0003, 0.001, 0.003} on the selection loss (seeds 0, 1))"
    assert f"lr 0.0003 not chosen {chosen}" in index
    assert f"selection run: seed 0 chose lr 0.001, so it is never reported {chosen}" in index


def test_c4_tables_carry_apollo_apollo_mini_and_fira_at_every_stage_of_their_grids(tmp_path):
    """sweeps/cpu_c4.yaml's grid covers APOLLO, APOLLO-Mini and Fira too: each method gets its own labelled row in
    the table, the grid table, the paired differences and the frontier as its runs come in, and one with part of its
    grid (or nothing yet) breaks nothing. APOLLO-Mini is not a low-rank method here (its rank is fixed at 1): its runs
    carry no rank, and the table's rank row names only the others' 64."""
    r = tmp_path / "r"
    state = {"gradnormlorp": 3 << 20, "apollo": 2 << 20, "fira": 5 << 20, "apollo_mini": 1 << 20}
    for method in ("gradnormlorp", "apollo", "fira"):   # the whole grid on seed 0, 1e-2 chosen
        _c4_grid_run(r, method, 3e-3, 0, 6.50, 700.0, state_bytes=state[method])
        _c4_grid_run(r, method, 1e-2, 0, 6.40, 690.0, state_bytes=state[method])
    for seed, ppl in ((1, 680.0), (2, 684.0)):          # fresh seeds: GradNormLoRP and APOLLO both, Fira seed 1 only
        _c4_grid_run(r, "gradnormlorp", 1e-2, seed, 6.41, ppl, state_bytes=state["gradnormlorp"])
        _c4_grid_run(r, "apollo", 1e-2, seed, 6.42, ppl + 10.0, state_bytes=state["apollo"])
    _c4_grid_run(r, "fira", 1e-2, 1, 6.43, 675.0, state_bytes=state["fira"])
    _c4_grid_run(r, "apollo_mini", 3e-3, 0, 6.60, 720.0, state_bytes=state["apollo_mini"])  # grid under way:
    _c4_grid_run(r, "apollo_mini", 1e-2, 0, 6.55, 710.0, state_bytes=state["apollo_mini"])  # no reported seed yet
    paths = tables.build_tables(r, tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "c4_other-sizes.md").read_text()
    rows = _rows(md)
    assert rows["GradNormLoRP | ours (2 runs)"][:2] == ["0.01", "682.00 ± 2.00"]
    assert rows["APOLLO | ours (2 runs)"][:2] == ["0.01", "692.00 ± 2.00"]
    assert rows["Fira | ours (1 run)"][:2] == ["0.01", "675.00"]
    assert not any(k.startswith("APOLLO-Mini") for k in rows)      # its seed-0 runs chose and are never reported
    assert rows["rank r | ours"] == ["—", "64"]
    grid = [line for line in (tmp_path / "t" / "c4_other-sizes_lr_grid.md").read_text().splitlines()
            if "| llama_20m |" in line]
    edge = "**chosen**, at the grid's edge"
    assert grid == [  # every seed run at a rate (seed 0 chose), in the methods' order, APOLLO-Mini among them
        "| GradNormLoRP | llama_20m | 0.003 | 1 | 6.5000 | 700.00 |  |",
        f"| GradNormLoRP | llama_20m | 0.01 | 3 | 6.4000 | 684.00 ± 5.00 | {edge} |",
        "| APOLLO | llama_20m | 0.003 | 1 | 6.5000 | 700.00 |  |",
        f"| APOLLO | llama_20m | 0.01 | 3 | 6.4000 | 690.00 ± 2.00 | {edge} |",
        "| APOLLO-Mini | llama_20m | 0.003 | 1 | 6.6000 | 720.00 |  |",
        f"| APOLLO-Mini | llama_20m | 0.01 | 1 | 6.5500 | 710.00 | {edge} |",
        "| Fira | llama_20m | 0.003 | 1 | 6.5000 | 700.00 |  |",
        f"| Fira | llama_20m | 0.01 | 2 | 6.4000 | 682.50 ± 7.50 | {edge} |"]
    differences = [line.split(" | ")[:2] for line in
                   (tmp_path / "t" / "c4_other-sizes_differences.md").read_text().splitlines() if " − " in line]
    # seeds 1 and 2 in common; Fira has one seed, APOLLO-Mini none, and no full-rank row to compare with
    assert differences == [["| GradNormLoRP − APOLLO", "-10.00 [-10.00, -10.00]"]]
    assert "frontier_c4_llama_20m.png" in [p.name for p in paths]
    from gnlorp.results import collect
    from gnlorp.tables import plots
    from gnlorp.tables.c4 import _c4_keys
    from gnlorp.tables.common import _labels

    runs = collect(r)[0]
    key_of, keys = _c4_keys(runs)
    points = plots.frontier_points(runs, _labels(keys, "c4", with_rank=False), lambda run: key_of[id(run)])
    assert [(p["label"], p["state_bytes"]) for p in points] == [
        ("GradNormLoRP", 3 << 20), ("APOLLO", 2 << 20), ("Fira", 5 << 20)]
    cpu_c4 = ("full", "lora", "galore", "gradnormlorp", "relora", "switchlora", "apollo", "apollo_mini", "fira")
    assert len({plots._style(m) for m in cpu_c4}) == len({plots._color(m) for m in cpu_c4}) == 9  # none hides another


def test_grids_that_differ_in_another_setting_are_told_apart_in_the_grid_table(tmp_path):
    """Two grids of one method and task that differ in a setting besides the rate (MRPC on 1600 rows and on every
    row, results/glue_cpu_2026-12-03/) are two groups of rows in the grid table, each naming its setting."""
    r = tmp_path / "r"
    points = [(subset, lr, 0, score) for subset, scores in ((1600, (0.80, 0.81)), (None, (0.82, 0.83)))
              for lr, score in zip((1e-4, 3e-4), scores)]
    for subset, lr, seed, score in points + [(None, 3e-4, 1, 0.84)]:  # and one reported seed: a table to list them
        settings = {"train.lr": lr, "method.name": "lora", "task.max_train_samples": subset, "seed": seed}
        cfg = _config("glue", "mrpc", "minilm", "lora", 8, "fp32", seed, lr=lr, subset=subset)
        rec = RunRecord(r, f"glue-mrpc-minilm-lora-r8-fp32-s{seed}-{subset}-{lr:g}", cfg, clock=CLOCK)
        rec.set_identity(hash=f"{subset}-{lr:g}", settings=settings)
        rec.git = {"sha": "0" * 40, "dirty": False}
        m = {"validation": {"accuracy": 0.7, "f1": score}, "selection": {"accuracy": 0.7, "f1": score}}
        rec.add_eval(10, m, epoch=1)
        rec.set_best_last({"step": 10, "epoch": 1, "metrics": m}, {"step": 10, "epoch": 1, "metrics": m})
        rec.write("complete")
    tables.build_tables(r, tmp_path / "t", memory=False)
    grid = (tmp_path / "t" / "glue_minilm_lr_grid.md").read_text()
    assert "| LoRA (rank 8) | MRPC [task.max_train_samples=1600] | 0.0003 | 1 | 81.00 | 81.00 | **chosen**, at the grid's edge |" in grid
    assert "| LoRA (rank 8) | MRPC [task.max_train_samples=None] | 0.0003 | 2 | 83.00 | 83.50 ± 0.50 | **chosen**, at the grid's edge |" in grid
    assert "| LoRA (rank 8) | MRPC | " not in grid


def test_no_table_reports_a_run_whose_seed_chose_its_learning_rate(tmp_path):
    """Whatever the results folder holds, a reported run never shares its seed with its grid's selection runs."""
    r = tmp_path / "r"
    for seed in (0, 1):
        for lr, sel in ((1e-3, 6.4), (3e-3, 6.5)):
            _c4_grid_run(r, "gradnormlorp", lr, seed, sel + seed / 100, 650.0)
    _c4_grid_run(r, "gradnormlorp", 1e-3, 4, 6.4, 640.0)
    from gnlorp.results import collect

    runs, _, _, grids = collect(r)
    (grid,) = grids
    assert grid.selection_seeds == {0, 1}
    assert [(run.seed, run.settings["train.lr"]) for run in runs] == [(4, 1e-3)]


def test_a_grid_sweeps_selection_run_is_never_reported_while_its_grid_has_one_rate(tmp_path):
    """The first rate of a new method's cpu_c4 grid (seed 0) is a selection run, not a one-run row: left out with
    the reason until its grid chooses; a single seed-0 run of no grid sweep (a user's own run) is tabulated."""
    from gnlorp.lr_selection import GRID_SWEEPS
    from gnlorp.results import collect

    r = tmp_path / "r"
    _c4_grid_run(r, "apollo", 1e-2, 0, 6.4, 650.0)
    _c4_grid_run(r, "fira", 1e-2, 0, 6.4, 640.0)
    for path in r.glob("*apollo*.json"):
        rec = json.loads(path.read_text())
        rec["origin"] = {"sweep": "cpu_c4", "experiment": "c4_llama_20m_cpu"}
        path.write_text(json.dumps(rec))
    runs, excluded, _, grids = collect(r)
    assert "cpu_c4" in GRID_SWEEPS and grids == []
    assert [run.method for run in runs] == ["fira"]
    (left,) = [e for e in excluded if "apollo" in e.name]
    assert left.reason.startswith("selection run (seed 0 of a cpu_c4 grid)")


def test_glue_table_shows_the_trivial_baseline_and_flags_cells_that_do_not_beat_it(tmp_path):
    base = {"validation": {"accuracy": 146 / 277}}  # RTE's dev majority class
    for seed, (lora, full, galore) in enumerate(((0.52, 0.60, 0.556), (0.53, 0.62, 0.557), (0.51, 0.61, 0.555))):
        write_glue(tmp_path / "r", "rte", "lora", 8, seed, acc(lora), baseline=base)
        write_glue(tmp_path / "r", "rte", "full", None, seed, acc(full), baseline=base)
        write_glue(tmp_path / "r", "rte", "galore", 8, seed, acc(galore), baseline=base)
    tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "glue_minilm.md").read_text()
    rows = _rows(md)
    assert rows["trivial baseline | best constant prediction"][0] == "52.71"
    assert rows["LoRA (rank 8) | ours (3 runs)"][0] == "52.00 ± 1.00‡"     # below 52.71
    assert rows["GaLore (rank 8) | ours (3 runs)"][0] == "55.60 ± 0.10‡"   # above it, but by less than 3 points
    assert rows["Full fine-tuning | ours (3 runs)"][0] == "61.00 ± 1.00"
    assert "‡: the cell's median does not beat it by 3 points, or by a tenth of the distance to 100" in md


def test_the_baseline_margin_is_three_points_or_a_tenth_of_the_way_to_a_perfect_score():
    from gnlorp.tables.glue import _below_baseline, required_margin

    assert required_margin(0.0) == 3.0 and required_margin(52.71) == 3.0
    assert required_margin(81.22) == pytest.approx(1.878)              # MRPC's all-"paraphrase" F1
    assert _below_baseline(83.0, 81.22) and not _below_baseline(83.2, 81.22)
    assert not _below_baseline(3.0, 0.0) and _below_baseline(2.99, 0.0) and not _below_baseline(1.0, None)


def test_glue_differences_table_pairs_runs_by_seed(tmp_path):
    for seed, (gnl, lora, full) in enumerate(((0.61, 0.60, 0.50), (0.72, 0.70, 0.52), (0.63, 0.60, 0.51))):
        write_glue(tmp_path / "r", "rte", "gradnormlorp", 8, seed, acc(gnl))
        write_glue(tmp_path / "r", "rte", "lora", 8, seed, acc(lora))
        write_glue(tmp_path / "r", "rte", "full", None, seed, acc(full))
    tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "glue_minilm_differences.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in md.splitlines() if " − " in line}
    assert rows["GradNormLoRP (rank 8) − LoRA (rank 8)"][0].startswith("+2.00 [")  # (1 + 2 + 3) / 3
    assert rows["LoRA (rank 8) − Full fine-tuning"][0].startswith("+12.33 [")     # (10 + 18 + 9) / 3, seed by seed
    # the headline columns: the per-seed differences, the sign test, the detectable size, the verdict from the interval
    from gnlorp.paired import detectable

    assert [c.strip(" |") for c in rows["LoRA (rank 8) − Full fine-tuning"][-4:]] == [
        "+10.00, +18.00, +9.00", "0.25", f"{detectable(4.9329, 3):.2f}", "ahead"]  # 12.33 ± 4.303 * 4.93 / √3
    assert [c.strip(" |") for c in rows["GradNormLoRP (rank 8) − LoRA (rank 8)"][-4:]] == [
        "+1.00, +2.00, +3.00", "0.25", f"{detectable(1.0, 3):.2f}", "no difference shown"]  # 2 ± 4.303 / √3


def test_glue_differences_average_the_tasks_above_baseline_apart(tmp_path):
    """RTE: both methods beat the majority class (50.0); SST-2: LoRA's median (49.0) does not. avg pairs the mean
    over both tasks seed by seed; "avg above baseline" the mean over RTE alone."""
    base = {"validation": {"accuracy": 0.50}}
    for seed, (g_rte, l_rte, g_sst, l_sst) in enumerate(((0.61, 0.60, 0.70, 0.49), (0.72, 0.70, 0.71, 0.49),
                                                          (0.63, 0.60, 0.72, 0.51))):
        for task, g, l in (("rte", g_rte, l_rte), ("sst2", g_sst, l_sst)):
            write_glue(tmp_path / "r", task, "gradnormlorp", 8, seed, acc(g), baseline=base)
            write_glue(tmp_path / "r", task, "lora", 8, seed, acc(l), baseline=base)
    tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "glue_minilm_differences.md").read_text()
    assert ("| Difference | RTE | SST-2 | avg | avg above baseline | avg above baseline: per seed | sign test p | "
            "detectable | verdict |") in md
    row = next(line for line in md.splitlines() if line.startswith("| GradNormLoRP (rank 8) − LoRA"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[0].startswith("+2.00 [") and cells[1].startswith("+21.33 [")  # (1+2+3)/3, (21+22+21)/3
    assert cells[2].startswith("+11.67 [")                                   # per seed (d_rte + d_sst) / 2
    assert cells[3] == cells[0]                                              # RTE alone
    assert "the same over RTE, the tasks on which every method's median clears the trivial baseline" in md


def test_glue_grid_chooses_rate_and_epoch_on_held_out_rows_never_on_dev(tmp_path):
    """Two rates x 2 selection seeds (and 2 fresh seeds at the chosen rate), two epochs each. 1e-4 has the better dev scores, 3e-4 the better selection score
    (75 against 70): 3e-4 is chosen, and its runs report dev at their best selection epoch (epoch 1: 0.50),
    not at their best dev epoch (epoch 2: 0.55)."""
    r = tmp_path / "r"
    for lr, sel, dev, seeds in ((1e-4, (0.60, 0.70), (0.80, 0.90), (0, 1)), (3e-4, (0.75, 0.65), (0.50, 0.55), (0, 1, 2, 3))):
        for seed in seeds:  # seeds 0 and 1 choose; 2 and 3 are the fresh runs at the chosen rate, the reported ones
            cfg = _config("glue", "rte", "minilm", "lora", 8, "fp32", seed, lr=lr)
            rec = RunRecord(r, f"glue-rte-minilm-lora-r8-fp32-s{seed}-{lr:g}", cfg, clock=CLOCK)
            rec.set_identity(hash=f"{lr:g}", settings={"train.lr": lr, "method.name": "lora", "seed": seed})
            rec.git = {"sha": "0" * 40, "dirty": False}
            evals = [{"validation": {"accuracy": dev[e] + 0.01 * seed}, "selection": {"accuracy": sel[e]}}
                     for e in (0, 1)]
            for e, m in enumerate(evals):
                rec.add_eval(10 * (e + 1), m, epoch=e + 1)
            best = max(range(2), key=lambda e: evals[e]["validation"]["accuracy"])  # the dev-chosen `best`
            rec.set_best_last({"step": 10 * (best + 1), "epoch": best + 1, "metrics": evals[best]},
                              {"step": 20, "epoch": 2, "metrics": evals[1]})
            rec.write("complete")
    tables.build_tables(r, tmp_path / "t", memory=False)
    md = (tmp_path / "t" / "glue_minilm.md").read_text()
    assert _rows(md)["LoRA (rank 8) | ours (2 runs)"][0] == "52.50 ± 0.50"
    grid = (tmp_path / "t" / "glue_minilm_lr_grid.md").read_text()
    assert "| LoRA (rank 8) | RTE | 0.0003 | 4 | 75.00 ± 0.00 | 51.50 ± 1.50 | **chosen**, at the grid's edge |" in grid
    assert "| LoRA (rank 8) | RTE | 0.0001 | 2 | 70.00 ± 0.00 | 90.50 ± 0.50 |  |" in grid
    assert "nothing is chosen on the dev split" in md
    index = (tmp_path / "t" / "index.md").read_text()
    assert "(lr 0.0003 chosen from {0.0001, 0.0003} on the best selection accuracy (seeds 0, 1))" in index


def test_dev_plot_sets_rows_with_equal_scores_side_by_side_with_their_seed_range(tmp_path, monkeypatch):
    """GaLore and GradNormLoRP with the same dev scores at every epoch (as on STS-B of the earlier CPU recipe): each
    row's markers sit at their own x around the epoch, so neither hides the other; the bars span min..max over seeds."""
    import matplotlib

    from gnlorp.tables import plots

    matplotlib.use("Agg")
    for method in ("galore", "gradnormlorp"):
        for seed, (best, last) in enumerate([(0.70, 0.78), (0.74, 0.80)]):
            write_glue(tmp_path, "stsb", method, 8, seed, {"validation": {"pearson": best}},
                       {"validation": {"pearson": last}})
    runs, *_ = tables.collect(tmp_path)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    key = lambda r: (r.method, r.rank, r.precision, r.variant)  # noqa: E731
    plots.dev_metric_plot(tmp_path / "p.png", "t", runs, {key(r): r.method for r in runs}, key)
    (ax,) = figures[0].axes
    rows = {c.get_label(): c for c in ax.containers}  # one errorbar (line, caps, bars) per row
    assert set(rows) == {"galore", "gradnormlorp"}
    half = plots.DODGE / 2
    for label, x in (("galore", -half), ("gradnormlorp", half)):
        line, _, (bars,) = rows[label].lines
        assert list(line.get_xdata()) == pytest.approx([1 + x, 2 + x])
        assert list(line.get_ydata()) == pytest.approx([72.0, 79.0])  # medians of (70, 74) and (78, 80)
        spans = [v for seg in bars.get_segments() for v in (seg[0][0], seg[0][1], seg[1][1])]  # x, low, high
        assert spans == pytest.approx([1 + x, 70.0, 74.0, 2 + x, 78.0, 80.0])


def test_dev_plot_draws_the_tasks_trivial_baseline_from_the_records(tmp_path, monkeypatch):
    """The record's baseline (the best constant prediction on dev) is a horizontal line at its ×100 value, labelled
    with it; a plot whose records carry no baseline draws no such line."""
    import matplotlib

    from gnlorp.tables import plots

    matplotlib.use("Agg")
    key = lambda r: (r.method, r.rank, r.precision, r.variant)  # noqa: E731
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    for folder, baseline in (("with", {"validation": {"accuracy": 0.5271}}), ("without", None)):
        for seed in (0, 1):
            write_glue(tmp_path / folder, "rte", "lora", 8, seed, {"validation": {"accuracy": 0.55 + 0.01 * seed}},
                       baseline=baseline)
        runs, *_ = tables.collect(tmp_path / folder)
        plots.dev_metric_plot(tmp_path / "p.png", "t", runs, {key(r): r.method for r in runs}, key)
    flat = lambda ax: [ln for ln in ax.get_lines() if ln.get_label().startswith("trivial")]  # noqa: E731
    (line,) = flat(figures[0].axes[0])
    assert list(line.get_ydata()) == pytest.approx([52.71, 52.71])
    assert line.get_label() == "trivial baseline (52.71)"
    assert flat(figures[1].axes[0]) == []


def test_loss_plot_zooms_on_the_second_half_with_each_rows_median_and_seed_band(tmp_path, monkeypatch):
    """Two methods 0.1 apart late in training, after a fall from 10: the right panel's y-range is fitted to the second
    half (so 0.1 is a tenth of it, not a hundredth), each row is one median line, its band spans the seeds."""
    import matplotlib

    from gnlorp.tables import plots

    matplotlib.use("Agg")
    for method, offset in (("galore", 0.0), ("gradnormlorp", -0.1)):
        for seed in (1, 2):
            rec = RunRecord(tmp_path, f"c4-llama_20m-{method}-r64-fp32-s{seed}",
                            _config("c4", "c4", "llama_20m", method, 64, "fp32", seed), clock=CLOCK)
            for step in range(1, 101):
                rec.add_loss(step, (10.0 if step <= 10 else 6.5) + offset + 0.02 * seed, 1e-3)
            m = {"validation": {"loss": 6.5, "perplexity": 665.0}}
            rec.set_best_last({"step": 100, "epoch": 1, "metrics": m}, {"step": 100, "epoch": 1, "metrics": m})
            rec.write("complete")
    runs, *_ = tables.collect(tmp_path)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    key = lambda r: (r.method, r.rank, r.precision, r.variant)  # noqa: E731
    plots.loss_plot(tmp_path / "l.png", "t", runs, {key(r): r.method for r in runs}, key)
    whole, late = figures[0].axes
    assert whole.get_yscale() == "log" and [ln.get_label() for ln in whole.lines] == ["galore", "gradnormlorp"]
    low, high = late.get_ylim()
    assert 6.3 < low < 6.42 and 6.52 < high < 6.7                       # the late values only: 6.42 .. 6.54
    medians = [ln.get_ydata() for ln in late.lines]
    assert [m[-1] for m in medians] == pytest.approx([6.53, 6.43])       # median of seeds 1, 2 (+0.02, +0.04)
    band = late.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(6.52) and band.max() == pytest.approx(6.54)


def _write_c4_with_state(results: Path, method, rank, seed, ppl, state_bytes):
    rec = RunRecord(results, f"c4-llama_20m-{method}{'' if rank is None else f'-r{rank}'}-fp32-s{seed}",
                    _config("c4", "c4", "llama_20m", method, rank, "fp32", seed), clock=CLOCK)
    rec.git = {"sha": "0" * 40, "dirty": False}
    for step in (1, 2):
        rec.add_loss(step, 10.0 - step, 1e-3)
    m = {"validation": {"loss": 1.0, "perplexity": ppl}}
    rec.set_best_last({"step": 2, "epoch": 1, "metrics": m}, {"step": 2, "epoch": 1, "metrics": m})
    rec.set_memory(optimizer_state_bytes=state_bytes)
    rec.write("complete")


def test_frontier_plot_puts_each_method_at_its_state_bytes_and_median_perplexity(tmp_path, monkeypatch):
    """One point per method: x = the optimizer-state bytes the runs recorded (MiB), y = the median final perplexity
    over seeds, bars = the seeds' min and max; a run without recorded state bytes is no point."""
    import matplotlib

    from gnlorp.tables import plots

    matplotlib.use("Agg")
    for seed, ppl in enumerate((30.0, 32.0, 31.0)):
        _write_c4_with_state(tmp_path, "full", None, seed, ppl, 4 * 2**20)
    for seed, ppl in enumerate((35.0, 33.0, 34.5)):
        _write_c4_with_state(tmp_path, "galore", 64, seed, ppl, 2**20)
    write_c4(tmp_path, "llama_20m", "lora", 64, 0, 40.0, precision="fp32")  # no memory recorded
    runs, *_ = tables.collect(tmp_path)
    key = lambda r: (r.method, r.rank, r.precision, r.variant)  # noqa: E731
    points = plots.frontier_points(runs, {key(r): r.method for r in runs}, key)
    assert [(p["label"], p["state_bytes"], p["ppl"], p["low"], p["high"]) for p in points] == [
        ("full", 4 * 2**20, 31.0, 30.0, 32.0), ("galore", 2**20, 34.5, 33.0, 35.0)]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.frontier_plot(tmp_path / "f.png", "t", points)
    ax, right = figures[0].axes
    assert ax.get_xlabel() == "optimizer state (MiB, measured)" and right.get_xlabel().startswith("training peak")
    rows = {c.get_label(): c for c in ax.containers}
    assert set(rows) == {"full", "galore"}
    for label, x, spans in (("full", 4.0, [31.0, 30.0, 32.0]), ("galore", 1.0, [34.5, 33.0, 35.0])):
        line, _, (bars,) = rows[label].lines
        assert list(line.get_xdata()) == pytest.approx([x]) and list(line.get_ydata()) == pytest.approx(spans[:1])
        assert [v for seg in bars.get_segments() for v in (seg[0][1], seg[1][1])] == pytest.approx(spans[1:])
    names = {t.get_text(): t for t in ax.texts}  # each point named beside it, joined to it by a line
    assert set(names) == {"full", "galore"} and names["full"].xy == pytest.approx((4.0, 31.0))
    assert abs(names["full"].get_position()[1] - names["galore"].get_position()[1]) >= 0.055 * (35.0 - 30.0) - 1e-9


def test_frontier_labels_keep_their_order_and_a_gap_centred_on_their_points():
    from gnlorp.tables.plots import _spread

    assert _spread([700.0, 701.0, 900.0], 10.0) == pytest.approx([697.0, 707.0, 897.0])  # 701 up 9, then all down 3
    assert _spread([5.0], 1.0) == [5.0] and _spread([], 1.0) == []
    ys = [3.0, 1.0, 2.0, 2.5]
    out = _spread(ys, 0.8)
    assert sorted(range(4), key=lambda i: out[i]) == sorted(range(4), key=lambda i: ys[i])
    assert min(b - a for a, b in zip(sorted(out), sorted(out)[1:])) >= 0.8 - 1e-12
    assert sum(out) == pytest.approx(sum(ys))


def test_frontier_is_written_per_c4_size_and_its_hollow_marker_is_the_memory_models_peak(tmp_path):
    from gnlorp.memory_model import Setup, peak
    from gnlorp.models import llama_model_cfg
    from gnlorp.results import collect
    from gnlorp.tables import plots

    _write_c4_with_state(tmp_path / "r", "galore", 64, 0, 33.0, 2**20)
    paths = tables.build_tables(tmp_path / "r", tmp_path / "t", memory=False)
    assert "frontier_c4_llama_20m.png" in [p.name for p in paths]
    assert "(frontier_c4_llama_20m.png)" in (tmp_path / "t" / "index.md").read_text()
    run = collect(tmp_path / "r")[0][0]
    assert plots._analytic_peak(run) is None  # a config without the run's shapes: no modelled peak
    run.record["config"].update(model=llama_model_cfg("llama_20m"), task={"seq_len": 256},
                                train={"batch_size": 8}, precision={"optim_bits": 32}, method={"name": "galore"})
    assert plots._analytic_peak(run) == peak(Setup(model="llama_20m", method="galore", rank=64, batch=8,
                                                   seq_len=256)).peak
