"""TrainLoop on a toy regression model (no runner, no data files): layer-wise mode over a partial last
batch, and the learning rate the loop records for each step."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gnlorp.methods import MethodConfig
from gnlorp.methods.optimizers import build_adamw
from gnlorp.train import LoopConfig, TrainData, TrainLoop, warmup_cosine


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 4)])

    def forward(self, x, y):
        out = self.layers[1](torch.tanh(self.layers[0](x)))
        return SimpleNamespace(loss=((out - y) ** 2).mean())  # a mean per example: exact accumulation weights


def _data(n: int) -> TrainData:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)
    return TrainData(n, lambda idx: {"x": x[idx], "y": y[idx]}, lambda batch: len(batch["x"]))


def _loop(model, optimizer, data, steps, batch, micro, on_log=lambda *a: None, **cfg):
    cfg = LoopConfig(total_steps=steps, batch_size=batch, micro_batch_size=micro, grad_clip=0.0, progress=False,
                     eval_at_epoch_end=False, **cfg)
    return TrainLoop(model, optimizer, data, cfg, lambda m: {}, on_log, lambda *a: None, None, torch.device("cpu"))


@pytest.mark.parametrize("projected", [False, True])
def test_layerwise_with_accumulation_and_a_partial_batch_equals_normal_mode(projected):
    """10 examples, batch 4, micro-batch 2: batches of 4, 4, 2 per epoch, so every third step has one
    micro-batch instead of two. Six steps (two epochs) in layer-wise mode end where normal mode does."""
    results = {}
    for layerwise in (False, True):
        model = Toy()
        cfg = MethodConfig(name="galore", lr=1e-2, rank=2, update_proj_gap=4, weight_decay=0.1,
                           layerwise=True, accumulation_steps=2)
        opt = build_adamw(model, cfg, low_rank=[layer.weight for layer in model.layers] if projected else [])
        if not layerwise:  # the same GaLoreAdamW (groups, decay) stepping after backward: normal mode
            opt.remove_hooks()
            opt = opt.optimizer
            assert not hasattr(opt, "begin_step")
        _loop(model, opt, _data(10), steps=6, batch=4, micro=2).run()
        steps = {s["step"] for s in (opt.optimizer if layerwise else opt).state.values()}
        results[layerwise] = (model, steps)
    (normal, normal_steps), (layerwise, layerwise_steps) = results[False], results[True]
    assert normal_steps == layerwise_steps == {6}
    for (name, a), b in zip(normal.named_parameters(), layerwise.parameters()):
        assert (a - b).abs().max().item() <= 1e-6, name


def test_recorded_lr_is_the_lr_each_step_used():
    peak, steps = 0.1, 12
    model = Toy()
    used = []

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = SGD(model.parameters(), lr=peak)
    logged = []
    _loop(model, opt, _data(8), steps=steps, batch=2, micro=2, warmup_ratio=0.25, min_lr_ratio=0.1,
          on_log=lambda s, v: logged.append((s, v["lr"]))).run()
    factor = warmup_cosine(steps, 0.25, 0.1)
    assert [s for s, _ in logged] == list(range(1, steps + 1))
    expected = [peak * factor(k) for k in range(steps)]  # step k+1 runs with the schedule's factor(k)
    assert [lr for _, lr in logged] == pytest.approx(expected, rel=1e-12, abs=0)
    assert [lr for _, lr in logged] == used
    assert logged[0][1] == pytest.approx(peak / 3)  # warmup of 3 steps: 1/3 of the peak at step 1


def test_method_hooks_after_each_applied_step_and_lr_lambda_replaces_the_schedule():
    """after_step(step) runs once per optimizer step, after it (the parameters it sees are that step's), and
    lr_lambda sets the learning rate of every step in place of warmup_cosine."""
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    first = model.layers[0].weight

    def after_step(step):
        seen.append((step, first.detach().clone()))

    logged = []
    cfg = LoopConfig(total_steps=5, batch_size=2, micro_batch_size=1, grad_clip=0.0, progress=False,
                     eval_at_epoch_end=False)
    TrainLoop(model, opt, _data(8), cfg, lambda m: {}, lambda s, v: logged.append(v["lr"]), lambda *a: None, None,
              torch.device("cpu"), after_step=after_step, lr_lambda=lambda k: 1.0 / (k + 1)).run()
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert torch.equal(seen[-1][1], first.detach())
    assert not torch.equal(seen[0][1], seen[1][1])
    assert logged == pytest.approx([0.1 / (k + 1) for k in range(5)], rel=1e-12)
