"""The optimizer-state memory table, LLaMA 60M-7B, against the published claims (analytic), and the measured
whole-training peak against the memory model (`make peak-memory`'s files)."""

from __future__ import annotations

from pathlib import Path

from ..memory import DEFINITION
from ..methods import is_low_rank
from ..methods.apollo import trained_rank
from ..methods import label as method_label
from .common import DASH, METHOD_ORDER, Table, _md_table, _paper_cell, _size_order
from .published import MEMORY_CLAIMS, MEMORY_DEFINITION, MEMORY_GB_CLAIMS, PAPER_MEMORY, PAPER_RANK, SIZE_LABEL

PRECISIONS = ((16, None), (8, None), (8, "torchao"), (4, "torchao"))  # table order of a method's state precisions


def _states(bits: int, library: str | None) -> str:
    return f"{bits}-bit" + (f" ({library})" if library else "")


def memory_tables(rows: list[dict]) -> Table:
    """GaLore Table 6 style: optimizer-state GB per method and state precision at the paper's rank of each size,
    the published Table 6 numbers beside, then the published saving claims against ours."""
    sizes = [s for s in ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b") if any(r["model"] == s for r in rows)]
    by = {(r["model"], r["method"], r["rank"], r["state_bits"], r.get("optim_library")): r for r in rows}
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    header = ["Method", "States", "Source"] + [f"{SIZE_LABEL[s]} (r={PAPER_RANK[s]})" for s in sizes]
    out = []
    for m in methods:
        for bits, library in PRECISIONS:
            if not any(r["method"] == m and (r["state_bits"], r.get("optim_library")) == (bits, library) for r in rows):
                continue
            cells = []
            for s in sizes:
                r = by.get((s, m, PAPER_RANK[s] if is_low_rank(m) else None, bits, library))
                cells.append(DASH if r is None else f"{r['state_bytes'] / 1e9:.2f} GB ({100 * r['saving_vs_bf16_adamw']:.1f}%)")
            out.append([method_label(m, 'memory'), _states(bits, library), "ours (analytic)"] + cells)
            if bits == 16 and m in PAPER_MEMORY:
                out.append([method_label(m, 'memory'), "16-bit", "paper (GaLore Table 6, states only)"]
                           + [_paper_cell(PAPER_MEMORY[m].get(s)) + ("" if s not in PAPER_MEMORY[m] else " GB") for s in sizes])

    others = [m for m in methods if any(r.get("other_bytes") for r in rows if r["method"] == m)]
    other_rows = []
    for m in others:
        for where, text in (("device", "on the device"), ("cpu", "CPU memory")):
            cells = [by.get((s, m, PAPER_RANK[s] if is_low_rank(m) else None, 16, None)) for s in sizes]
            other_rows.append([method_label(m, 'memory'), text] + [
                DASH if r is None or "other_bytes" not in r else f"{r['other_bytes'][where] / 1e9:.2f} GB" for r in cells])

    ranks = sorted({r["rank"] for r in rows if r["rank"] is not None and r["model"] == "llama_7b"})
    claims = []
    for label, source, value, method, bits in MEMORY_CLAIMS:
        at = by.get(("llama_7b", method, 1024, bits, None))
        reach = [k for k in ranks if (r := by.get(("llama_7b", method, k, bits, None))) and r["saving_vs_bf16_adamw"] >= value]
        claims.append([label, source, MEMORY_DEFINITION[source], f"{100 * value:.1f}%",
                       f"{100 * at['saving_vs_bf16_adamw']:.1f}% (r=1024)" if at else DASH,
                       f"r ≤ {max(reach)}" if reach else (DASH if not ranks else f"none of r = {', '.join(map(str, ranks))}")])
    for label, source, gb, method, bits, rank in MEMORY_GB_CLAIMS:
        at = by.get(("llama_7b", method, rank, bits, None))
        claims.append([label, source, MEMORY_DEFINITION[source], f"{gb:.1f} GB",
                       f"{at['state_bytes'] / 1e9:.2f} GB" + (f" (r={rank})" if rank else "") if at else DASH, DASH])
    sections = ["## Published claims against ours\n\n" + _md_table(
        ["Claim", "Source", "What it counts", "Published", "Ours, 7B", "Ours at 7B reach it at"], claims,
        ["l", "l", "l", "r", "r", "r"])]
    if other_rows:
        sections.append("## Memory kept outside the optimizer state (BF16, at the paper's ranks)\n\n"
                        "Not optimizer state, so not in the figures above: SwitchLoRA's candidate pools (min(m, n) "
                        "vectors per factor and layer, in CPU memory by default) and its swap bookkeeping.\n\n"
                        + _md_table(["Method", "Where"] + [f"{SIZE_LABEL[s]} (r={PAPER_RANK[s]})" for s in sizes],
                                    other_rows, ["l", "l"] + ["r"] * len(sizes)))
    if ranks:
        by_rank = []
        for m in [m for m in methods if is_low_rank(m)]:
            for bits in (16, 8):
                cells = [by.get(("llama_7b", m, k, bits, None)) for k in ranks]
                by_rank.append([method_label(m, 'memory'), f"{bits}-bit"] + [
                    DASH if r is None else f"{r['state_bytes'] / 1e9:.2f} GB ({100 * r['saving_vs_bf16_adamw']:.1f}%)"
                    for r in cells])
        sections.append("## LLaMA-7B by rank (saving against BF16 AdamW in parentheses)\n\n" + _md_table(
            ["Method", "States"] + [f"r={k}" for k in ranks], by_rank, ["l", "l"] + ["r"] * len(ranks)))
    notes = [
        f"What is counted (ours, as `python -m gnlorp.memory` says): {DEFINITION}.",
        "Optimizer-state bytes from gnlorp.memory.llama_memory_table (METHOD.md's formulas, checked against the real "
        "optimizer tensors in tests/unit/test_memory.py and test_lowbit.py), in GB = 10^9 bytes as in GaLore Table 6; in "
        "parentheses the saving against BF16 AdamW on the same model. Embeddings, norms and the LM head keep dense AdamW "
        "states for every method; LoRA's frozen weights are not optimizer state.",
        "16-bit: BF16 moments and projectors; 8-bit: blockwise 8-bit moments (bitsandbytes; tensors under 4096 "
        "elements keep 32-bit moments), projectors in BF16; 8-bit / 4-bit (torchao): full training with torchao's "
        "AdamW8bit / AdamW4bit (precision=ao8bit / ao4bit; 1 or 1/2 byte per element, a float32 scale per 256 or 128, "
        "tensors under 4096 elements in BF16).",
        "paper: GaLore Table 6 gives optimizer states at 60M–1B only; 7B and GradNormLoRP are not given (\"—\").",
        "Published figures count different things (\"What it counts\"): GaLore's Tables 2 and 3 weights + states, "
        "Fira's parameters + gradients + states, APOLLO's the projected moments alone (1.62 GB at 7B r=256 in our "
        "arithmetic; ours adds the stored projector and the embedding, head and norm states).",
    ]
    return Table("memory", "Optimizer-state memory, LLaMA 60M–7B at the paper's ranks", header,
                 ["l", "l", "l"] + ["r"] * len(sizes), out, notes, sections)


def _peak_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    """The rows of `make peak-memory`'s files in `folder` (peak_<model>.json), and the files."""
    import json

    files = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("peak_*.json"))]
    return [r for f in files for r in f["rows"]], files


def peak_table(folder: Path) -> Table | None:
    """Measured whole-training peak against the memory model, from `make peak-memory`'s files; None without them."""
    rows, files = _peak_rows(Path(folder))
    if not rows:
        return None
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (_size_order(r["model"]), order.get(r["method"], len(order))))
    mib = 1024**2
    out = [[r["model"].removeprefix("llama_").upper(), method_label(r["method"], "memory"),
            str(trained_rank(r["method"], r["rank"])) if r["rank"] else DASH, f"{r['measured_bytes'] / mib:.1f}", f"{r['predicted_bytes'] / mib:.1f}",
            f"{100 * r['relative_error']:+.1f}%".replace("-", "−"), f"{r['measured_default_malloc_bytes'] / mib:.1f}",
            r["breakdown"]["peak_phase"]] for r in rows]
    under = [(r["measured_bytes"] - r["predicted_bytes"]) / mib for r in rows]
    retained = [r["default_malloc_retention_bytes"] / r["measured_bytes"] for r in rows]
    setups = sorted({(r["batch"], r["seq_len"], r["steps"]) for r in rows})
    devices = sorted({f"{f['device']['name']} ({f['device']['type']}, {f['device']['torch_threads']} thread)"
                      for f in files})
    shas = sorted({f["git"]["sha"][:7] for f in files})
    notes = [
        "Measured: the process's peak RSS (VmHWM) minus its RSS after all imports, before the model is built, with "
        "MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the process; model: gnlorp/memory_model.py's peak "
        "(weights, gradients, optimizer states, saved activations and each phase's temporaries), error = (model − "
        "measured) / measured.",
        f"Setup: fp32, {' / '.join(f'batch {b} × {s}, {n} steps' for b, s, n in setups)} of the project's training loop, "
        f"each case in a fresh process, on {'; '.join(devices)}, at {', '.join(shas)}.",
        f"The model is under the measurement by {min(under):.1f}–{max(under):.1f} MiB: what no tensor count sees "
        "(oneDNN/MKL scratch, Python and autograd objects). With glibc's default allocator freed tensors stay "
        f"resident and add another {100 * min(retained):.0f}–{100 * max(retained):.0f}%.",
        "Peak phase: where the model puts the peak (backward_head: the start of the loss head's backward, with three "
        "float32 tokens × vocabulary tensors alive).",
    ]
    return Table("peak_memory", "Whole-training peak memory, measured against the memory model (CPU)",
                 ["Model", "Method", "Rank", "Measured (MiB)", "Model (MiB)", "Error",
                  "glibc default malloc (MiB)", "Peak phase"],
                 ["l", "l", "r", "r", "r", "r", "r", "l"], out, notes)
