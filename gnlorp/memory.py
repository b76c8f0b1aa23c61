"""Optimizer-state memory: the bytes an optimizer really holds, and the analytic estimate of
METHOD.md's formulas that must equal it (tests check the two agree to the byte on tiny models).

Each method's formula is its state_bytes (gnlorp/methods/<name>.py), built from the blocks below.
Per target matrix W (m x n), rank r, element size b (bytes):
  AdamW          2 m n b
  LoRA           2 (m r + r n) b          (+ 2 m b for DoRA's magnitude)
  GaLore         projector + 2 b * |R|    with R = r x n (left), m x r (right) or r x r (full)
  GradNormLoRP   GaLore's + 2 m b         (Adam on the magnitude g)
LoRA's A and B and the magnitudes (DoRA, GradNormLoRP) are float32 next to 16-bit weights, so b = 4 for them.
8-bit moments take 1 byte per element plus a float32 scale per 256-element block, for tensors of at
least 4096 elements (smaller ones keep float32 moments, as in bitsandbytes), and two shared 256-entry
float32 quantization maps. torch.optim.AdamW also keeps a float32 `step` scalar per parameter.

`python -m gnlorp.memory` prints the table for LLaMA 60M..7B, built on the meta device (no memory used).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .methods.base import MethodConfig
from .optim.targets import classifier_head_names, is_causal_lm, target_linear_names
from .methods.optimizers import base_optimizer
from .optim.projector import low_rank_shape, projection_side

BLOCKSIZE = 256
QMAP_BYTES = 2 * 256 * 4  # signed and unsigned dynamic maps, float32
MIN_8BIT_SIZE = 4096


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every distinct tensor storage the optimizer holds (moments, projectors, 8-bit block
    scales and quantization maps, step counters)."""
    opt = base_optimizer(optimizer)
    # FSDP: a DTensor counts this process's shard
    tensors = [getattr(v, "to_local", lambda v=v: v)() for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v)]
    tensors += [q for pair in getattr(opt, "_qmaps", {}).values() for q in pair]
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _moments(numel: int, b: int, bits: int) -> tuple[int, bool]:
    """Bytes of two Adam moments over `numel` elements; and whether they are 8-bit."""
    if bits == 8 and numel >= MIN_8BIT_SIZE:
        return 2 * numel + 2 * 4 * math.ceil(numel / BLOCKSIZE), True
    return 2 * numel * (4 if bits == 8 else b), False


def estimate_state_bytes(model: nn.Module, cfg: MethodConfig, element_bytes: int | None = None) -> int:
    """Analytic optimizer-state bytes of `cfg.name` on `model` *before* the method prepares it (each method's
    state_bytes, from the building blocks below).

    element_bytes: the size of one moment / projector element (default: the parameters' own dtype),
    e.g. 2 for BF16 states in the memory table."""
    from .methods import get_method

    return get_method(cfg.name).state_bytes(model, cfg, element_bytes)


# ----------------------------------------------------------------------------- building blocks of the formulas
def size(p: torch.Tensor, element_bytes: int | None = None) -> int:
    return element_bytes or p.element_size()


def added_size(w: torch.Tensor, element_bytes: int | None = None) -> int:
    """A tensor a method adds next to a weight w (LoRA's A and B, DoRA's and GradNormLoRP's magnitude):
    float32 when w is 16-bit (peft's autocast_adapter_dtype; WeightNormLinear's g)."""
    return element_bytes or max(w.element_size(), 4)


def target_weights(model: nn.Module, cfg: MethodConfig) -> dict[str, torch.Tensor]:
    return {n: model.get_submodule(n).weight for n in target_linear_names(model, cfg.target_modules)}


def dense_besides(model: nn.Module, skip: list[torch.Tensor], element_bytes: int | None = None) -> list[tuple[int, int]]:
    """(numel, element bytes) of every trainable parameter but those in `skip`."""
    ids = {id(w) for w in skip}
    return [(p.numel(), size(p, element_bytes)) for p in model.parameters() if p.requires_grad and id(p) not in ids]


def lora_dense(model: nn.Module, targets: dict[str, torch.Tensor], r: int, element_bytes: int | None = None,
               magnitude: bool = False) -> list[tuple[int, int]]:
    """LoRA's trainable tensors: the factors A (r x n) and B (m x r) of every target (and a magnitude per row
    with `magnitude`), plus the dense parameters LoRA trains beside them (optim/targets.py: a causal LM
    everything but the target layers, a classifier its head)."""
    causal = is_causal_lm(model)
    prefixes = tuple(f"{n}." for n in targets)
    head = tuple(f"{n}." for n in classifier_head_names(model))
    dense = [(p.numel(), size(p, element_bytes)) for pname, p in model.named_parameters()
             if not pname.startswith(prefixes) and (causal or pname.startswith(head))]
    for w in targets.values():
        m, n = w.shape
        b = added_size(w, element_bytes)
        dense += [(r * n, b), (m * r, b)] + ([(m, b)] if magnitude else [])
    return dense


def projected_bytes(w: torch.Tensor, r: int, proj_type: str, bits: int, element_bytes: int | None = None) -> tuple[int, bool]:
    """GaLore's state for one weight: the projector(s) and the two moments of the projected gradient; and
    whether those moments are 8-bit."""
    b = size(w, element_bytes)
    side = projection_side(w.shape, proj_type)
    m, n = w.shape
    rr = min(r, m, n)
    total = b * {"left": m * rr, "right": rr * n, "both": m * rr + rr * n}[side]
    lo = low_rank_shape(w.shape, r, side)
    moment_bytes, is8 = _moments(lo[0] * lo[1], b, bits)
    return total + moment_bytes, is8


def adam_bytes(dense: list[tuple[int, int]], bits: int, step_scalars: bool, extra: int = 0,
               extra_8bit: bool = False) -> int:
    """Two Adam moments per (numel, element bytes) tensor, plus `extra` bytes (e.g. projected states; say
    `extra_8bit` if they hold 8-bit moments), torch.optim.AdamW's float32 step per tensor (`step_scalars`,
    32-bit only) and the two 8-bit quantization maps when any moment is 8-bit."""
    total, any8 = extra, extra_8bit
    if step_scalars and bits == 32:
        total += 4 * len(dense)
    for numel, b in dense:
        moment_bytes, is8 = _moments(numel, b, bits)
        total += moment_bytes
        any8 |= is8
    return total + (QMAP_BYTES if any8 else 0)


# ----------------------------------------------------------------------------- the LLaMA table
SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b")
RANKS = (128, 256, 512, 1024)
GIB = 1024**3


def llama_memory_table(sizes=SIZES, ranks=RANKS) -> list[dict]:
    """Optimizer-state bytes per size, method, rank and state precision (BF16 moments = '16-bit')."""
    from .methods import BASELINE, SPECS, get_method
    from .models import build_llama, llama_model_cfg

    methods = [s for s in SPECS.values() if s.variant_of is None]
    rows = []
    for size_name in sizes:
        model = build_llama(llama_model_cfg(size_name), device="meta")
        n_params = sum(p.numel() for p in model.parameters())
        baseline = estimate_state_bytes(model, MethodConfig(name=BASELINE, optim_bits=32), element_bytes=2)
        hidden = model.config.hidden_size
        for spec in methods:
            method = spec.name
            for bits in (16, 8):
                for rank in ([r for r in ranks if r < hidden] if spec.low_rank else [None]):
                    cfg = MethodConfig(name=method, rank=rank, optim_bits=8 if bits == 8 else 32)
                    b = estimate_state_bytes(model, cfg, element_bytes=2)
                    row = {
                        "model": size_name, "params": n_params, "method": method, "rank": rank, "state_bits": bits,
                        "state_bytes": b, "saving_vs_bf16_adamw": 1.0 - b / baseline,
                    }
                    other = getattr(get_method(method), "other_bytes", None)
                    if other is not None:  # memory the method keeps outside the optimizer, by where it lives
                        row["other_bytes"] = other(model, cfg, element_bytes=2)
                    rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | params | method | rank | states | optimizer state (GiB) | saving vs BF16 AdamW |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:,.0f}M | {r['method']} | {r['rank'] or '-'} | "
            f"{r['state_bits']}-bit | {r['state_bytes'] / GIB:.3f} | {100 * r['saving_vs_bf16_adamw']:.1f}% |"
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
    print("Optimizer-state memory (analytic, checked against real optimizer tensors in tests/unit/test_memory.py);")
    print("embeddings, norms and the LM head on dense AdamW for every method; LoRA's frozen W not counted.\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
