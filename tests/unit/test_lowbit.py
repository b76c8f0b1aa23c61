"""torchao's low-bit AdamW (precision=ao8bit / ao4bit, method=full): the runner's wiring against torchao called
directly, the state bytes against the analytic formula, a bit-exact resume through a weights-only checkpoint, and
the refusals that come before anything loads."""

import io

import pytest
import torch

from conftest import compose
from gnlorp.errors import UserError
from gnlorp.methods import MethodConfig, estimate_state_bytes, get_method
from gnlorp.state_bytes import optimizer_state_bytes, torchao_moment_bytes

torchao_optim = pytest.importorskip("torchao.optim")


def _llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64)).to(dtype)


def _cfg(bits):
    return MethodConfig(name="full", lr=1e-3, weight_decay=0.1, optim_bits=bits, optim_library="torchao")


def _ours(model, bits):
    return get_method("full").build_optimizer(get_method("full").prepare(model, _cfg(bits)), _cfg(bits))


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(i))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_moment_bytes_by_hand():
    # 8-bit: 4096 codes + 16 float32 block scales + a 256-entry float32 map; 4-bit: 2048 bytes + 32 scales + 16 entries
    assert torchao_moment_bytes(4096, 4, 8) == 4096 + 4 * 16 + 4 * 256
    assert torchao_moment_bytes(4096, 4, 4) == 2048 + 4 * 32 + 4 * 16
    # under 4096 elements, or not a whole number of blocks: plain moments in the parameter's dtype
    assert torchao_moment_bytes(64, 2, 8) == 128 and torchao_moment_bytes(4096 + 128, 4, 8) == 4 * (4096 + 128)
    assert torchao_moment_bytes(4096 + 128, 4, 4) == (4096 + 128) // 2 + 4 * 33 + 4 * 16


@pytest.mark.slow  # torch.compile of torchao's step: ~15 s a case on a cold inductor cache (make test runs it)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [8, 4])
def test_measured_equals_analytic(bits, dtype):
    model = _llama(dtype)
    expected = estimate_state_bytes(model, _cfg(bits))
    opt = _ours(model, bits)
    _train(model, opt, 1)
    assert type(opt) is (torchao_optim.AdamW8bit if bits == 8 else torchao_optim.AdamW4bit)
    assert optimizer_state_bytes(opt) == expected
    quantized = [v for st in opt.state.values() for v in st.values() if type(v) is not torch.Tensor]
    assert len(quantized) == 2 * sum(p.numel() >= 4096 for p in model.parameters())  # the weight matrices' moments


@pytest.mark.slow  # torch.compile of torchao's step: ~15 s a case on a cold inductor cache (make test runs it)
@pytest.mark.parametrize("bits", [8, 4])
def test_the_runner_wiring_is_torchao_called_directly(bits):
    """Decay on weight matrices, none on norms, the run's lr/betas/eps: bit-identical to torchao's own optimizer."""
    ours, theirs = _llama(), _llama()
    cls = torchao_optim.AdamW8bit if bits == 8 else torchao_optim.AdamW4bit
    decay = [p for p in theirs.parameters() if p.dim() >= 2]
    plain = [p for p in theirs.parameters() if p.dim() < 2]
    direct = cls([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}], lr=1e-3,
                 betas=(0.9, 0.999), eps=1e-8)
    _train(ours, _ours(ours, bits), 3)
    _train(theirs, direct, 3)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), _llama().parameters()))


@pytest.mark.slow  # torch.compile of torchao's step: ~15 s a case on a cold inductor cache (make test runs it)
@pytest.mark.parametrize("bits", [8, 4])
def test_resume_through_a_weights_only_checkpoint_is_exact(bits):
    straight = _llama()
    _train(straight, _ours(straight, bits), 4)
    first = _llama()
    opt = _ours(first, bits)
    _train(first, opt, 2)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = _llama()
    resumed.load_state_dict(ckpt["model"])
    opt2 = _ours(resumed, bits)
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 2, start=2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def _check(*overrides):
    from gnlorp.checks import check_config

    return check_config(compose(["task=c4", "model=llama_tiny", *overrides]))


def test_the_presets_carry_torchao_and_their_bits():
    from gnlorp.planning import method_config

    for name, bits in (("ao8bit", 8), ("ao4bit", 4)):
        cfg = compose(["task=c4", "model=llama_tiny", "method=full", f"precision={name}"])
        m = method_config(cfg, _check("method=full", f"precision={name}"))
        assert (m.optim_bits, m.optim_library) == (bits, "torchao")


@pytest.mark.parametrize("overrides, fragments", [
    (["method=galore", "precision=ao8bit"], ["precision=ao8bit", "method=galore", "precision=8bit"]),
    (["method=full", "method.layerwise=true", "train.grad_clip=0", "precision=ao4bit"], ["method.layerwise=true", "precision=8bit"]),
    (["method=full", "precision=bf16", "precision.optim_bits=4"], ["optim_bits=4", "optim_library=torchao"]),
    (["method=full", "precision=bf16", "precision.optim_library=torchao"], ["32-bit", "precision=ao8bit"]),
])
def test_what_torchao_cannot_do_is_refused_in_one_line(overrides, fragments):
    with pytest.raises(UserError) as e:
        _check(*overrides)
    assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)


def test_without_torchao_or_a_compiler_the_refusal_names_the_reason_and_precision_8bit(monkeypatch):
    import importlib.util
    import shutil

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(UserError, match=r"torchao is not installed .*gnlorp\[lowbit\].*precision=8bit"):
        _check("method=full", "precision=ao8bit", "device=cpu")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"C\+\+ compiler.*precision=8bit"):
        _check("method=full", "precision=ao4bit", "device=cpu")


def test_the_optimizer_builder_refuses_torchao_for_anything_but_plain_full_training():
    cfg = MethodConfig(name="lora", lr=1e-3, rank=4, optim_bits=8, optim_library="torchao")
    lora = get_method("lora")
    with pytest.raises(ValueError, match="method=full"):
        lora.build_optimizer(lora.prepare(_llama(), cfg), cfg)
