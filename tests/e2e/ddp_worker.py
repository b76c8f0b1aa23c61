"""A method on a tiny LLaMA through TrainLoop, on one process or under torchrun (gloo, CPU), for
tests/e2e/test_ddp.py. Writes, per case, to OUT_DIR/<case>: rank<r>.pt (the parameters and buffers this rank
ends with) and rank<r>.json (the loss curve, on rank 0; the optimizer steps at which each projector was
computed; the buffers DDP broadcasts).

    python tests/e2e/ddp_worker.py OUT_DIR gnl                                        # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/e2e/ddp_worker.py OUT_DIR gnl,switch8
"""

import json
import os
import sys
from pathlib import Path

import torch

STEPS, BATCH, MICRO, SEQ, EXAMPLES, RANK, GAP = 6, 4, 2, 16, 16, 4, 2  # refreshes before steps 1, 3 and 5
DIMS = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=SEQ)
# Uneven: a vocabulary of 129, 75 MLP rows, 13 examples: step 4 takes the last row alone (a process without
# rows runs an empty micro-batch). SwitchLoRA swaps a vector every other step (interval 2).
ODD = dict(DIMS, vocab_size=129, intermediate_size=75)
SWITCH = dict(lr=1e-2, rank=RANK, switch_lora_interval=2, adam_warm_step=1, switch_descent_rate=10.0, weight_decay=0.1)
# name -> (method, MethodConfig overrides, model dims, examples, min_8bit_size or None)
CASES = {
    "gnl": ("gradnormlorp", dict(lr=1e-2, rank=RANK, update_proj_gap=GAP, svd="randomized", weight_decay=0.1),
            DIMS, EXAMPLES, None),
    "switch": ("switchlora", SWITCH, ODD, 13, None),
    "switch8": ("switchlora", dict(SWITCH, optim_bits=8), ODD, 13, 64),
}


def main(out_dir: str, cases: list[str]) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    for case in cases:
        out = Path(out_dir) / case
        out.mkdir(parents=True, exist_ok=True)
        run_case(case, out, world, rank)
    if world > 1:
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
        torch.distributed.destroy_process_group()
        # DDP's reducer still holds gloo objects, which interpreter exit tears down in no set order; a rank once
        # aborted with "terminate called without an active exception" (gloo threads destroyed while joinable).
        # Everything this worker owes the test is written: leave without that teardown.
        sys.stdout.flush()
        os._exit(0)


def run_case(case: str, out: Path, world: int, rank: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gnlorp.methods import MethodConfig, get_method
    from gnlorp.optim.layerwise import base_optimizer
    from gnlorp.optim import galore_adamw
    from gnlorp.train import LoopConfig, TrainData, TrainLoop

    method_name, overrides, dims, examples, min8 = CASES[case]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**dims))
    cfg = MethodConfig(name=method_name, **overrides)
    method = get_method(method_name)
    model = method.prepare(model, cfg)
    optimizer = method.build_optimizer(model, cfg)
    if min8 is not None:
        base_optimizer(optimizer).min_8bit_size = min8

    refreshes: dict[str, list[int]] = {}
    real = galore_adamw.compute_projection

    def counting(grad, rank_, side, svd="exact", name="?", *, seed=0, **options):
        assert svd == cfg.svd
        refreshes.setdefault(name, []).append(loop.pos.step + 1)  # the optimizer step that computes it
        return real(grad, rank_, side, svd, name, seed=seed, **options)

    galore_adamw.compute_projection = counting

    tokens = torch.randint(0, 128, (examples, SEQ), generator=torch.Generator().manual_seed(1))
    data = TrainData(examples, lambda idx: {"input_ids": tokens[idx], "labels": tokens[idx]},
                     lambda batch: batch["input_ids"].numel())
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else None
    losses = []
    loop_cfg = LoopConfig(total_steps=STEPS, batch_size=BATCH, micro_batch_size=MICRO, progress=False,
                          eval_at_epoch_end=False)
    hooks = {}  # SwitchLoRA's swaps, as the runner passes them
    if hasattr(method, "loop_hooks"):
        hooks = method.loop_hooks(model, optimizer, cfg, total_steps=STEPS, warmup_ratio=loop_cfg.warmup_ratio,
                                  min_lr_ratio=loop_cfg.min_lr_ratio)
    loop = TrainLoop(
        model, optimizer, data, loop_cfg, **hooks,
        evaluate=lambda m: {}, on_log=lambda step, v: losses.append([step, v["loss"]]), on_eval=lambda *a: None,
        device=torch.device("cpu"), world_size=world, rank=rank, ddp_model=ddp,
    )
    loop.run()
    galore_adamw.compute_projection = real
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")
    broadcast = None if ddp is None else sorted(ddp.named_module_buffers)
    (out / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "refreshes": refreshes,
                                                      "broadcast_buffers": broadcast}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2].split(","))
