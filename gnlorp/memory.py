"""Optimizer-state memory: the bytes an optimizer really holds, and the analytic estimate of
METHOD.md's formulas that must equal it (tests check the two agree to the byte on tiny models).

The formulas and the measurement are in gnlorp/state_bytes.py (each method's state_bytes is built from its
blocks); this module is the command that tabulates them.

`python -m gnlorp.memory` prints the table for LLaMA 60M..7B, built on the meta device (no memory used): every
registered method, and full training with torchao's 8- and 4-bit AdamW (precision=ao8bit / ao4bit).
"""

from __future__ import annotations

import json
from pathlib import Path

from .methods import estimate_state_bytes
from .methods.base import MethodConfig


# ----------------------------------------------------------------------------- the LLaMA table
SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b")
RANKS = (128, 256, 512, 1024)
GIB = 1024**3
# What the table counts; the header of `python -m gnlorp.memory` and the notes of `make tables`' memory table say it
DEFINITION = ("optimizer states only: every tensor the optimizer holds (Adam moments, projectors, 8-/4-bit block "
              "scales and quantization maps, step counters), with BF16 weights (moments in BF16 unless quantized); "
              "weights, gradients and activations not counted")
TORCHAO_BITS = (8, 4)  # full training's torchao rows (precision=ao8bit / ao4bit)


def llama_memory_table(sizes=SIZES, ranks=RANKS) -> list[dict]:
    """Optimizer-state bytes (DEFINITION) per size, method, rank and state precision (BF16 moments = '16-bit';
    optim_library "torchao": full training with torchao's AdamW8bit / AdamW4bit)."""
    from .methods import BASELINE, SPECS, get_method, optional_hook
    from .models import build_llama, llama_model_cfg

    methods = list(SPECS.values())
    rows = []
    for size_name in sizes:
        model = build_llama(llama_model_cfg(size_name), device="meta")
        n_params = sum(p.numel() for p in model.parameters())
        baseline = estimate_state_bytes(model, MethodConfig(name=BASELINE, optim_bits=32), element_bytes=2)
        hidden = model.config.hidden_size
        for spec in methods:
            method = spec.name
            precisions = [(16, None), (8, None)] + [(b, "torchao") for b in TORCHAO_BITS if method == BASELINE]
            for bits, library in precisions:
                for rank in ([r for r in ranks if r < hidden] if spec.low_rank else [None]):
                    cfg = MethodConfig(name=method, rank=rank, optim_bits=32 if bits == 16 else bits,
                                       optim_library=library)
                    b = estimate_state_bytes(model, cfg, element_bytes=2)
                    row = {
                        "model": size_name, "params": n_params, "method": method, "rank": rank, "state_bits": bits,
                        "optim_library": library, "state_bytes": b, "saving_vs_bf16_adamw": 1.0 - b / baseline,
                    }
                    other = optional_hook(get_method(method), "other_bytes")
                    if other is not None:  # memory the method keeps outside the optimizer, by where it lives
                        row["other_bytes"] = other(model, cfg, element_bytes=2)
                    rows.append(row)
    return rows


def states_label(row: dict) -> str:
    """'16-bit', '8-bit' (bitsandbytes' blockwise states), '8-bit torchao', '4-bit torchao'."""
    return f"{row['state_bits']}-bit" + (f" {row['optim_library']}" if row.get("optim_library") else "")


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | params | method | rank | states | optimizer state (GiB) | saving vs BF16 AdamW |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:,.0f}M | {r['method']} | {r['rank'] or '-'} | "
            f"{states_label(r)} | {r['state_bytes'] / GIB:.3f} | {100 * r['saving_vs_bf16_adamw']:.1f}% |"
        )
    others = [r for r in rows if r.get("other_bytes")]
    if others:
        lines += ["", "Memory kept outside the optimizer (e.g. SwitchLoRA's candidate pools), BF16:", "",
                  "| model | method | rank | on the device (GiB) | in CPU memory (GiB) |", "|---|---|---|---|---|"]
        for r in others:
            if r["state_bits"] == 16:
                o = r["other_bytes"]
                lines.append(f"| {r['model']} | {r['method']} | {r['rank'] or '-'} | {o['device'] / GIB:.3f} | "
                             f"{o['cpu'] / GIB:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """`python -m gnlorp.memory`: the optimizer-state table; `python -m gnlorp.memory peak --model ... --method ...`:
    the whole training peak, broken down (gnlorp/memory_model.py; `peak --help` lists its options)."""
    import sys

    from .errors import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["peak"]:
        from .memory_model import main as peak_main

        return run_command(peak_main, argv[1:])
    return run_command(_table_main, argv, what="--json")


def _check_table_args(sizes: list[str], ranks: list[int]) -> None:
    """Every size a LLaMA config, every rank asked for positive and below the hidden size of one of them."""
    from .errors import UserError
    from .models import llama_model_cfg

    if not sizes:
        raise UserError(f"--sizes needs at least one model, e.g. --sizes {' '.join(SIZES[:2])}.")
    hidden = []
    for name in sizes:
        cfg = llama_model_cfg(name)  # an unknown name: a UserError listing the known ones
        if cfg.get("kind", "llama") != "llama":
            raise UserError(f"--sizes {name}: the table is for LLaMA models, and {name} is an encoder "
                            f"(kind: {cfg.get('kind')}); choose llama_* models, e.g. --sizes {' '.join(SIZES[:2])}.")
        hidden.append(int(cfg["hidden_size"]))
    for r in ranks:
        if r <= 0:
            raise UserError(f"--ranks {r}: a rank must be a positive integer, e.g. --ranks {' '.join(map(str, RANKS))}.")
        if r >= max(hidden):
            raise UserError(f"--ranks {r} is not below the hidden size of any model asked for (largest: {max(hidden)}), "
                            f"so no low-rank row could use it; choose ranks below {max(hidden)}.")


def _table_main(argv) -> None:
    from .errors import one_line_argument_parser

    ap = one_line_argument_parser(prog="python -m gnlorp.memory", description=__doc__.split("\n\n")[0],
                                  epilog="`peak --help`: the whole training peak")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--ranks", nargs="*", type=int, default=None,
                    help=f"default {' '.join(map(str, RANKS))}; a model takes those below its hidden size")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    _check_table_args(args.sizes, args.ranks or [])
    if args.json:  # before the table is computed: a path that cannot be written is the only thing said
        import errno
        import os

        args.json.parent.mkdir(parents=True, exist_ok=True)
        if args.json.is_dir() or not os.access(args.json.parent, os.W_OK):
            code = errno.EISDIR if args.json.is_dir() else errno.EACCES
            raise OSError(code, os.strerror(code), str(args.json if args.json.is_dir() else args.json.parent))
    rows = llama_memory_table(args.sizes, RANKS if args.ranks is None else args.ranks)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    print(f"Memory counted: {DEFINITION}.")
    print("Analytic, checked against the real optimizer tensors (tests/unit/test_memory.py, test_lowbit.py); embeddings,")
    print("norms and the LM head on dense AdamW for every method; LoRA's frozen W not counted.\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
