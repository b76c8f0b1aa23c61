"""make gpu-check's CPU dry run: every path (each method in bf16 and 8-bit, layer-wise 8-bit GradNormLoRP with
checkpointing, the 24 GiB-capped step, the bf16 weight-norm layer) runs on LLaMA-tiny and learns."""

import pytest

from gnlorp.gpu_check import METHODS, run


@pytest.mark.slow  # ~13 s on this shared CPU
def test_dry_run_exercises_every_path():
    import torch

    out = run(torch.device("cpu"), dry=True)
    assert out["dry_run"] and out["device"]["type"] == "cpu"
    assert {(r["method"], r["optim_bits"]) for r in out["methods"]} == {(m, b) for m in METHODS for b in (32, 8)}
    torchao = out["torchao_full"]  # precision=ao8bit / ao4bit, where torchao is installed
    assert isinstance(torchao, dict) or {(r["method"], r["optim_bits"], r["optim_library"]) for r in torchao} == {
        ("full", 8, "torchao"), ("full", 4, "torchao")}
    for row in out["methods"] + [out["layerwise_1b"], out["llama7b_24gib"]] + ([] if isinstance(torchao, dict) else torchao):
        assert row["last_loss"] < row["first_loss"], row  # two steps on one batch: the step did something
        assert row["optimizer_state_bytes"] == row["optimizer_state_bytes_analytic"], row
    assert out["layerwise_1b"]["layerwise"] and out["layerwise_1b"]["checkpointing"]
    assert max(out["weightnorm_bf16"]["relative_errors_vs_float64"].values()) < 0.05
