"""TrainLoop on a toy regression model (no runner, no data files): gradient accumulation equals one big
batch, layer-wise mode over a partial last batch, the learning rate recorded for each step, a checkpoint round
trip that continues exactly, and the stop on a NaN."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gnlorp.methods import MethodConfig
from gnlorp.methods.optimizers import build_adamw
from gnlorp.train import Interrupted, LoopConfig, NonFiniteError, TrainData, TrainLoop, warmup_cosine


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 4)])

    def forward(self, x, y):
        out = self.layers[1](torch.tanh(self.layers[0](x)))
        return SimpleNamespace(loss=((out - y) ** 2).mean())  # a mean per example: exact accumulation weights


def _data(n: int, lengths: list[int] | None = None) -> TrainData:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)
    return TrainData(n, lambda idx: {"x": x[idx], "y": y[idx]}, lambda batch: len(batch["x"]), lengths=lengths)


def _loop(model, optimizer, data, steps, batch, micro, on_log=lambda *a: None, **cfg):
    cfg = LoopConfig(total_steps=steps, batch_size=batch, micro_batch_size=micro, grad_clip=0.0, progress=False,
                     eval_at_epoch_end=False, **cfg)
    return TrainLoop(model, optimizer, data, cfg, evaluate=lambda m: {}, on_log=on_log, on_eval=lambda *a: None,
                     device=torch.device("cpu"))


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
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _loop(model, opt, _data(10), steps=6, batch=4, micro=2).run()
        # torch's scheduler sees the layer-wise steps: no "lr_scheduler.step() before optimizer.step()" warning
        assert not [w for w in seen if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in seen]
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


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_accumulated_micro_batches_equal_one_big_batch(micro):
    """Batch 6 over 14 examples (a partial last batch of 2) in micro-batches of 1, 2 or 3: the same parameters
    as one forward pass per batch, to rounding (AdamW: a different gradient would show at once)."""
    ends = []
    for m in (6, micro):
        model = Toy()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        _loop(model, opt, _data(14), steps=5, batch=6, micro=m).run()
        ends.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*ends):
        assert (a - b).abs().max().item() <= 1e-6


@pytest.mark.parametrize("grouped", [False, True])
def test_a_checkpoint_round_trip_continues_exactly(tmp_path, grouped):
    """Stop after 4 of 9 steps (state_dict through save_checkpoint/load_checkpoint), load it into a fresh
    model, optimizer and loop: parameters, optimizer state and schedule end where an uninterrupted run does, also
    with batches grouped by length (the epoch's order is rebuilt, not stored)."""
    from gnlorp.checkpoint import load_checkpoint
    from gnlorp.checkpointer import Checkpointer

    def fresh():
        model = Toy()
        cfg = MethodConfig(name="galore", lr=1e-2, rank=2, update_proj_gap=3)
        return model, build_adamw(model, cfg, low_rank=[layer.weight for layer in model.layers])

    model, opt = fresh()
    _loop(model, opt, _data(10, lengths=[3, 9, 1, 7, 7, 2, 8, 5, 4, 6] if grouped else None), steps=9, batch=4, micro=2).run()
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = fresh()
    first = _loop(model, opt, _data(10, lengths=[3, 9, 1, 7, 7, 2, 8, 5, 4, 6] if grouped else None), steps=9, batch=4, micro=2, stop_at_step=4)
    first.checkpointer = Checkpointer(tmp_path / "last.pt", "toy", settings={})
    with pytest.raises(Interrupted):
        first.run()
    model, opt = fresh()
    second = _loop(model, opt, _data(10, lengths=[3, 9, 1, 7, 7, 2, 8, 5, 4, 6] if grouped else None), steps=9, batch=4, micro=2)
    second.load_state_dict(load_checkpoint(tmp_path / "last.pt", "cpu"))
    assert second.pos.step == 4
    second.run()
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b.detach())
    assert (tmp_path / "last.pt.sha256").is_file()  # the loop saved through save_checkpoint, checksum and all



def _batches_seen(data: TrainData, steps: int, batch: int) -> list[list[int]]:
    seen, collate = [], data.collate
    data.collate = lambda idx: seen.append(list(idx)) or collate(idx)
    model = Toy()
    _loop(model, torch.optim.SGD(model.parameters(), lr=0.0), data, steps=steps, batch=batch, micro=batch).run()
    return seen


def test_batches_grouped_by_length_pad_little_and_hold_every_example_once_per_epoch():
    """640 examples of 1..100 tokens, batch 8: transformers' grouping sorts megabatches of 20 batches, so within one
    the padding of its batches telescopes to at most its length range (99), times 8 rows; 4 megabatches plus the
    longest row moved to the front bound the padding per epoch by 8 x 99 x 5 = 3960 tokens. Random batches pad
    about E[max of 8] - mean = 89 - 50.5 tokens per row, ~25,000 per epoch."""
    n, batch = 640, 8
    lengths = [1 + (i * 37) % 100 for i in range(n)]
    padding = {}
    for grouped in (False, True):
        seen = _batches_seen(_data(n, lengths if grouped else None), steps=2 * n // batch, batch=batch)
        epochs = [seen[:n // batch], seen[n // batch:]]
        for epoch in epochs:
            assert sorted(i for b in epoch for i in b) == list(range(n))  # each example once per epoch
        assert epochs[0] != epochs[1]  # a new order each epoch
        padding[grouped] = [sum(batch * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in epoch)
                            for epoch in epochs]
    assert all(p <= batch * 99 * 5 for p in padding[True]), padding
    assert all(p > 20_000 for p in padding[False]), padding

def test_a_nan_loss_stops_at_its_step_naming_it():
    model = Toy()
    with torch.no_grad():
        model.layers[0].weight[0, 0] = float("nan")
    loop = _loop(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(8), steps=3, batch=4, micro=4)
    with pytest.raises(NonFiniteError, match=r"step 1: the loss is nan and the weight layers.0.weight holds NaN/Inf"):
        loop.run()
    assert loop.pos.step == 0


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
    TrainLoop(model, opt, _data(8), cfg, evaluate=lambda m: {}, on_log=lambda s, v: logged.append(v["lr"]),
              on_eval=lambda *a: None, device=torch.device("cpu"), after_step=after_step, lr_lambda=lambda k: 1.0 / (k + 1)).run()
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert torch.equal(seen[-1][1], first.detach())
    assert not torch.equal(seen[0][1], seen[1][1])
    assert logged == pytest.approx([0.1 / (k + 1) for k in range(5)], rel=1e-12)


@pytest.mark.parametrize("total, warmup_ratio, min_ratio", [(100, 0.1, 0.1), (200, 0.05, 0.0), (37, 0.2, 0.25)])
def test_the_schedule_is_transformers_cosine_with_min_lr_one_step_earlier_in_the_warmup(total, warmup_ratio, min_ratio):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from gnlorp.train import warmup_cosine

    warmup = int(warmup_ratio * total)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total,
                                                      min_lr_rate=min_ratio).lr_lambdas[0]
    ours = warmup_cosine(total, warmup_ratio, min_ratio)
    assert ref(0) == 0.0 and ours(0) == 1 / warmup                      # theirs wastes the first update
    assert all(ours(s) == pytest.approx(ref(s + 1)) for s in range(warmup))   # one step earlier, to the peak
    assert all(ours(s) == pytest.approx(ref(s), abs=1e-12) for s in range(warmup, total + 1))
