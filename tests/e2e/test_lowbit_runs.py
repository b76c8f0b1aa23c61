"""precision=ao8bit / ao4bit through the runner: torchao's low-bit AdamW states are measured as the formula says,
and a run stopped and resumed from its checkpoint ends where the straight run ends, bit for bit."""

import pytest
import torch

from conftest import compose, needs_shared, tiny_c4
from gnlorp.runner import run

pytest.importorskip("torchao.optim")
pytestmark = [needs_shared, pytest.mark.slow]


def _quiet(*_):
    pass


@pytest.mark.parametrize("precision", ["ao8bit", "ao4bit"])
def test_a_low_bit_run_resumes_exactly_and_measures_its_states(tmp_path, precision):
    args = ["method=full", f"precision={precision}", "train.num_threads=1"]
    straight = run(compose(tiny_c4(tmp_path / "a", *args)), echo=_quiet)
    mem = straight.record["memory"]
    assert straight.status == "complete" and mem["optimizer_state_bytes"] == mem["optimizer_state_bytes_analytic"] > 0
    part = run(compose(tiny_c4(tmp_path / "b", *args, "train.stop_at_step=7")), echo=_quiet)
    assert part.status == "incomplete" and part.record["train"]["steps"] == 7
    resumed = run(compose(tiny_c4(tmp_path / "b", *args, "resume=true")), echo=_quiet)
    assert resumed.status == "complete"
    name = straight.path.stem
    a = torch.load(tmp_path / "a" / "checkpoints" / name / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / name / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.record["loss_curve"] == resumed.record["loss_curve"]
