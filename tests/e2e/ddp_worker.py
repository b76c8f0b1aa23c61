"""GradNormLoRP on a tiny LLaMA through TrainLoop, on one process or under torchrun (gloo, CPU), for
tests/e2e/test_ddp.py. Writes to OUT_DIR: rank<r>.pt (the parameters this rank ends with) and rank<r>.json
(the loss curve, on rank 0, and the optimizer steps at which each projector was computed).

    python tests/e2e/ddp_worker.py OUT_DIR                                           # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/e2e/ddp_worker.py OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch

STEPS, BATCH, MICRO, SEQ, EXAMPLES, RANK, GAP = 6, 4, 2, 16, 16, 4, 2  # refreshes before steps 1, 3 and 5


def main(out_dir: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gnlorp.methods import MethodConfig, get_method
    from gnlorp.optim import galore_adamw
    from gnlorp.train import LoopConfig, TrainData, TrainLoop

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=SEQ))
    cfg = MethodConfig(name="gradnormlorp", lr=1e-2, rank=RANK, update_proj_gap=GAP, svd="randomized",
                       weight_decay=0.1)
    method = get_method("gradnormlorp")
    model = method.prepare(model, cfg)
    optimizer = method.build_optimizer(model, cfg)

    refreshes: dict[str, list[int]] = {}
    real = galore_adamw.compute_projection

    def counting(grad, rank_, side, svd="exact", name="?", seed=0):
        assert svd == "randomized"
        refreshes.setdefault(name, []).append(loop.pos.step + 1)  # the optimizer step that computes it
        return real(grad, rank_, side, svd, name, seed)

    galore_adamw.compute_projection = counting

    tokens = torch.randint(0, 128, (EXAMPLES, SEQ), generator=torch.Generator().manual_seed(1))
    data = TrainData(EXAMPLES, lambda idx: {"input_ids": tokens[idx], "labels": tokens[idx]},
                     lambda batch: batch["input_ids"].numel())
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else None
    losses = []
    loop = TrainLoop(
        model, optimizer, data,
        LoopConfig(total_steps=STEPS, batch_size=BATCH, micro_batch_size=MICRO, progress=False, eval_at_epoch_end=False),
        evaluate=lambda m: {}, on_log=lambda step, v: losses.append([step, v["loss"]]), on_eval=lambda *a: None,
        checkpoint_path=None, device=torch.device("cpu"), world_size=world, rank=rank, ddp_model=ddp,
    )
    loop.run()
    out = Path(out_dir)
    torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "refreshes": refreshes}))
    if world > 1:
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
        torch.distributed.destroy_process_group()
        # DDP's reducer still holds gloo objects, which interpreter exit tears down in no set order; a rank once
        # aborted with "terminate called without an active exception" (gloo threads destroyed while joinable).
        # Everything this worker owes the test is written: leave without that teardown.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
