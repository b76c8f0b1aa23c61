"""Every method on a tiny LLaMA through TrainLoop, on one process or FSDP2 under torchrun (gloo, CPU), for
tests/test_fsdp.py. Runs the named cases one after the other in one launch (process start-up dominates) and
writes, per case, to OUT_DIR/<case>.pt (rank 0: the whole model's parameters at the end, gathered from the
shards) and OUT_DIR/<case>.json (rank 0: the loss curve; per rank the bytes of the Adam moments and of the
projectors; per optimizer step the bytes of each collective the optimizer issued, and per step those of the
backward pass, counted by wrapping torch.distributed's collectives; the steps at which projectors were computed).

    python tests/fsdp_worker.py OUT_DIR full32,galore8                      # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/fsdp_worker.py OUT_DIR full32,galore8
    ... OUT_DIR CASES --stop 9 CKPT_DIR     # stop after step 9 (sharded checkpoint in CKPT_DIR/<case>)
    ... OUT_DIR CASES --resume CKPT_DIR     # resume from it and finish
"""

import json
import os
import sys
from pathlib import Path

import torch

STEPS, MICRO, SEQ, EXAMPLES, GAP = 20, 2, 16, 64, 8  # projectors computed before steps 1, 9 and 17
DIMS = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=SEQ)
# name -> (method, MethodConfig overrides, min_8bit_size or None, examples per step)
# 8-bit cases take one micro-batch per process on 2 processes: each process's gradient is then the one-process
# micro-batch's bitwise (loss weights 1/2 and the average over 2 are exact powers of two), so the comparison
# isolates the sharded optimizer: 8-bit quantization is discontinuous and would amplify a summation-order
# difference of the gradient (1e-7) into a different quantized level. For the same reason they do not clip
# (the global norm is summed in another order over shards); the 32-bit cases clip at 1.0.
CASES = {
    "full32": ("full", dict(lr=1e-3, weight_decay=0.1), None, 8),
    "full8": ("full", dict(lr=1e-3, optim_bits=8), None, 4),
    "lora": ("lora", dict(lr=1e-3, rank=4), None, 8),
    "dora": ("dora", dict(lr=1e-3, rank=4, weight_decay=0.1), None, 8),
    # merge-and-reset at steps 8 and 16 (switchlora refuses FSDP: gnlorp.checks, methods/switchlora.py)
    "relora": ("relora", dict(lr=1e-3, rank=4, lora_dropout=0.0, relora_reset_every=8, relora_restart_warmup=2),
               None, 8),
    "galore32": ("galore", dict(lr=3e-3, rank=8, svd="exact", weight_decay=0.1), None, 8),
    "galore8": ("galore", dict(lr=3e-3, rank=8, svd="randomized", optim_bits=8, proj_type="right"), 256, 4),
    "galore8_left": ("galore", dict(lr=3e-3, rank=8, svd="exact", optim_bits=8, proj_type="left",
                                    exact_projection=True), 256, 4),
    "gnl8_full": ("gradnormlorp", dict(lr=3e-3, rank=16, svd="randomized", optim_bits=8, proj_type="full",
                                       exact_projection=True), 256, 4),
    "galore_left": ("galore", dict(lr=3e-3, rank=8, svd="exact", proj_type="reverse_std"), None, 8),
    "galore_full": ("galore", dict(lr=3e-3, rank=8, svd="randomized", proj_type="full"), None, 8),
    "gnl32": ("gradnormlorp", dict(lr=3e-3, rank=8, svd="randomized", weight_decay=0.1), None, 8),
    "gnl8": ("gradnormlorp", dict(lr=3e-3, rank=8, svd="exact", optim_bits=8, proj_type="right"), 256, 4),
}
# Uneven shapes and batches: a vocabulary of 129 and 75 MLP rows (split 65/64 and 38/37 over 2 processes,
# 43/43/43 and 25/25/25 over 3): 8-bit shards that do not start on a 256-element block, shards packed at odd
# offsets in FSDP's buffers; 61 examples: a last batch of 5 rows (batch 8: [2, 1] and [2] micro-batches over 2
# processes) or of 1 row (batch 4: one process has none). Steps 16 (batch 4) and 8, 16 (batch 8) are partial.
UNEVEN_DIMS, UNEVEN_EXAMPLES = dict(DIMS, vocab_size=129, hidden_size=48, intermediate_size=75), 61
UNEVEN_CASES = {
    "galore8_odd": ("galore", dict(lr=3e-3, rank=8, svd="exact", optim_bits=8, proj_type="right"), 256, 4),
    "gnl8_odd": ("gradnormlorp", dict(lr=3e-3, rank=8, svd="exact", optim_bits=8, proj_type="right"), 256, 4),
    "galore32_odd": ("galore", dict(lr=3e-3, rank=8, svd="exact", weight_decay=0.1), None, 8),
}
FIXED = "@fixed"  # a case name with this suffix: fixed_gradients
MOMENTS = ("exp_avg", "exp_avg_sq", "absmax1", "absmax2")
PROJECTORS = ("proj_left", "proj_right")
COLLECTIVES = ("all_gather_into_tensor", "reduce_scatter_tensor", "all_gather_single", "reduce_scatter_single",
               "all_reduce")


class CommCounter:
    """Bytes of the full buffer of every collective (all-gather: its output; reduce-scatter: its input),
    attributed to the phase the loop is in ('backward' until the optimizer step, then 'optimizer')."""

    def __init__(self):
        import torch.distributed as dist

        self.phase, self.steps, self.current = "backward", [], {"backward": [], "optimizer": []}
        for name in COLLECTIVES:
            real = getattr(dist, name)
            setattr(dist, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def counted(*args, **kwargs):
            tensors = list(args[:2]) + [kwargs.get(k) for k in ("output", "input", "tensor")]
            tensors = [t for t in tensors if torch.is_tensor(t)]
            if name == "all_reduce":
                size = tensors[0]
            else:
                size = max(tensors, key=lambda t: t.numel())  # the whole buffer, not the shard
            self.current[self.phase].append([name, size.numel() * size.element_size()])
            return real(*args, **kwargs)
        return counted

    def wrap_step(self, optimizer):
        step = optimizer.step

        def counted_step(*args, **kwargs):
            self.phase = "optimizer"
            try:
                return step(*args, **kwargs)
            finally:
                self.steps.append(self.current)
                self.current, self.phase = {"backward": [], "optimizer": []}, "backward"
        optimizer.step = counted_step


def state_bytes(optimizer) -> dict:
    from gnlorp.optim.sharded import local

    out = {"moments": 0, "projectors": 0}
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k in MOMENTS:
                out["moments"] += local(v).numel() * local(v).element_size()
            elif torch.is_tensor(v) and k in PROJECTORS:
                out["projectors"] += v.numel() * v.element_size()
    return out


def fixed_gradients(optimizer, model, loop) -> None:
    """Before each optimizer step, every gradient is replaced by one drawn from (its name, the step): the
    optimizer then steps one process's and N processes' shards on the same gradient, so that an 8-bit run
    on 3 processes (whose averaged gradient differs from one process's in the last bits) can be compared
    bit for bit. The shards are written in place, where FSDP put them."""
    import zlib

    from gnlorp.optim.sharded import local, row_start

    names = {id(p): n for n, p in model.named_parameters()}
    step = optimizer.step

    def replaced(*args, **kwargs):
        for p in (p for g in optimizer.param_groups for p in g["params"] if p.grad is not None):
            seed = zlib.crc32(names[id(p)].encode()) + 1000 * loop.pos.step
            whole = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 1e-2
            shard = local(p.grad)
            if shard is not p.grad:
                start = row_start(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())
                whole = whole[start:start + shard.shape[0]]
            shard.copy_(whole)
        return step(*args, **kwargs)
    optimizer.step = replaced


def run_case(case: str, out: Path, world: int, rank: int, stop: int | None, ckpt: Path | None, resume: bool,
             counter) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gnlorp.checkpointer import Checkpointer
    from gnlorp.fsdp import full_state_dict, shard_model
    from gnlorp.methods import MethodConfig, get_method
    from gnlorp.optim.layerwise import base_optimizer
    from gnlorp.optim import galore_adamw
    from gnlorp.train import Interrupted, LoopConfig, TrainData, TrainLoop

    name, fixed = case.removesuffix(FIXED), case.endswith(FIXED)
    method_name, overrides, min8, batch = {**CASES, **UNEVEN_CASES}[name]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(UNEVEN_DIMS if name in UNEVEN_CASES else DIMS)))
    cfg = MethodConfig(name=method_name, update_proj_gap=GAP, **overrides)
    method = get_method(method_name)
    model = method.prepare(model, cfg)
    if world > 1:
        shard_model(model, torch.device("cpu"))
    optimizer = method.build_optimizer(model, cfg)
    if world == 1 and method_name == "full" and cfg.optim_bits == 8:
        # under FSDP 8-bit full training runs GaLoreAdamW's dense 8-bit path (bitsandbytes' AdamW8bit takes no
        # DTensor): the one-process reference runs the same optimizer
        from gnlorp.optim import GaLoreAdamW, adamw_param_groups

        optimizer = GaLoreAdamW(adamw_param_groups(model, weight_decay=cfg.weight_decay), lr=cfg.lr,
                                betas=cfg.betas, eps=cfg.eps, optim_bits=8)
    if min8 is not None:
        base_optimizer(optimizer).min_8bit_size = min8

    refreshes: dict[str, list[int]] = {}
    real = galore_adamw.compute_projection

    def counting(grad, rank_, side, svd="exact", name="?", *, seed=0, **options):
        refreshes.setdefault(name, []).append(loop.pos.step + 1)  # the optimizer step that computes it
        return real(grad, rank_, side, svd, name, seed=seed, **options)

    galore_adamw.compute_projection = counting
    examples = UNEVEN_EXAMPLES if name in UNEVEN_CASES else EXAMPLES
    tokens = torch.randint(0, 128, (examples, SEQ), generator=torch.Generator().manual_seed(1))
    data = TrainData(examples, lambda idx: {"input_ids": tokens[idx], "labels": tokens[idx]},
                     lambda batch: batch["input_ids"].numel())
    losses = []
    loop_cfg = LoopConfig(total_steps=STEPS, batch_size=batch, micro_batch_size=MICRO, progress=False,
                          eval_at_epoch_end=False, stop_at_step=stop, grad_clip=1.0 if cfg.optim_bits == 32 else 0.0)
    hooks = {}  # a method's after_step / lr_lambda (ReLoRA's merges and jagged schedule), as the runner passes them
    if hasattr(method, "loop_hooks"):
        hooks = method.loop_hooks(model, optimizer, cfg, total_steps=STEPS, warmup_ratio=loop_cfg.warmup_ratio,
                                  min_lr_ratio=loop_cfg.min_lr_ratio)
    loop = TrainLoop(
        model, optimizer, data, loop_cfg, **hooks,
        evaluate=lambda m: {}, on_log=lambda step, v: losses.append([step, v["loss"]]), on_eval=lambda *a: None,
        device=torch.device("cpu"), world_size=world, rank=rank,
        checkpointer=None if ckpt is None else Checkpointer(ckpt / case, case, settings={}, rank=rank, sharded=world > 1),
    )
    if fixed:
        fixed_gradients(base_optimizer(optimizer), model, loop)
    if counter is not None:  # after TrainLoop: its LR scheduler wraps the bound method first
        counter.steps.clear()
        counter.wrap_step(optimizer)
    if resume:
        from gnlorp.sharded_checkpoint import load_sharded

        loop.load_state_dict(load_sharded(ckpt / case, model))
    try:
        loop.run()
    except Interrupted:
        pass
    finally:
        galore_adamw.compute_projection = real
    wn_rows = None
    if world > 1:  # WeightNormLinear: this rank's rows of V and g give exactly its rows of the merged W
        from gnlorp.optim.sharded import local, row_start
        from gnlorp.optim.weightnorm import WeightNormLinear, _norm_and_scale, _scaled_weight

        wn_rows = 0.0
        for m in (m for m in model.modules() if isinstance(m, WeightNormLinear)):
            V, g = local(m.direction.detach()), local(m.magnitude.detach())
            assert V.shape[0] == g.shape[0]
            merged = _scaled_weight(m.direction.full_tensor(), _norm_and_scale(m.direction.full_tensor(),
                                    m.magnitude.full_tensor())[1], V.dtype)
            start = row_start(m.direction.shape[0], world, rank)
            mine = _scaled_weight(V, _norm_and_scale(V, g)[1], V.dtype)
            wn_rows = max(wn_rows, (mine - merged[start:start + V.shape[0]]).abs().max().item())
    params = full_state_dict(model) if world > 1 else model.state_dict()
    sizes = [state_bytes(base_optimizer(optimizer))]
    if world > 1:
        sizes = [None] * world
        torch.distributed.all_gather_object(sizes, state_bytes(base_optimizer(optimizer)))
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in params.items()}, out / f"{case}.pt")
        (out / f"{case}.json").write_text(json.dumps({
            "losses": losses, "refreshes": refreshes, "state_bytes": sizes,
            "comm": counter.steps if counter is not None else [],
            "optimizer": type(base_optimizer(optimizer)).__name__, "weightnorm_row_shard_error": wn_rows,
        }))


def main() -> None:
    out, cases = Path(sys.argv[1]), sys.argv[2].split(",")
    stop = int(sys.argv[sys.argv.index("--stop") + 1]) if "--stop" in sys.argv else None
    ckpt_arg = next((sys.argv[i + 1] for i, a in enumerate(sys.argv) if a in ("--stop", "--resume")), None)
    if "--stop" in sys.argv:
        ckpt_arg = sys.argv[sys.argv.index("--stop") + 2]
    resume = "--resume" in sys.argv
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, counter = 0, None
    if world > 1:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        counter = CommCounter()
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        run_case(case, out, world, rank, stop, Path(ckpt_arg) if ckpt_arg else None, resume, counter)
    if world > 1:
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
