"""The peak-memory model's terms against independent counts: parameter bytes of the prepared model, the
tensors autograd really saves (saved-tensor hooks), hand counts of the formulas."""

import pytest
import torch

from gnlorp.memory_model import Dims, Setup, activation_bytes, peak, trainable_sizes, weight_bytes
from gnlorp.methods import MethodConfig, get_method
from gnlorp.models import build_llama

TINY = dict(name="t", kind="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=2, vocab_size=1000, max_position_embeddings=64)
B, S, RANK = 2, 16, 8


def prepared(method, dtype=torch.float32, attention="sdpa", checkpointing=False):
    model = build_llama(TINY, seed=0)
    model.config._attn_implementation = attention
    model.to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = MethodConfig(name=method, rank=None if method == "full" else RANK)
    model = get_method(method).prepare(model, cfg)
    model.train()
    return model


def saved_bytes(model) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward (each held until the count is
    done, so that a storage freed with a discarded graph, such as DoRA's norm path, is not reused and merged)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = (st.nbytes(), t)
        return t

    ids = torch.randint(0, TINY["vocab_size"], (B, S), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss
    return sum(n for n, _ in seen.values())


def setup(method, dtype="fp32", attention="sdpa", **kw):
    return Setup(model=TINY, method=method, rank=None if method == "full" else RANK, dtype=dtype, batch=B,
                 seq_len=S, attention=attention, **kw)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["full", "lora", "dora", "galore", "gradnormlorp"])
def test_saved_activations_equal_autograds(method, attention):
    d = Dims.of(TINY)
    # DoRA's norm path (eye(n) through lora_A, lora_B) saves an n x n and an n x r tensor per target and is
    # discarded before backward (the model counts it as a forward temporary): the hooks see it too.
    discarded = 4 * d.layers * sum(n * n + n * RANK for _, n in d.targets()) if method == "dora" else 0
    assert activation_bytes(d, setup(method, attention=attention)) + discarded == saved_bytes(
        prepared(method, attention=attention))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["full", "gradnormlorp"])
def test_saved_activations_in_bf16_equal_autograds(method, attention):
    assert activation_bytes(Dims.of(TINY), setup(method, "bf16", attention)) == saved_bytes(
        prepared(method, torch.bfloat16, attention))


@pytest.mark.parametrize("method", ["full", "gradnormlorp"])
def test_checkpointing_keeps_one_hidden_state_per_layer(method):
    """A layer more costs exactly b T h under checkpointing (its input), measured with saved-tensor hooks."""
    one = saved_bytes(build_and_prepare(method, layers=1))
    two = saved_bytes(build_and_prepare(method, layers=2))
    assert two - one == 4 * B * S * TINY["hidden_size"]
    d2 = Dims.of({**TINY, "num_hidden_layers": 2})
    d1 = Dims.of({**TINY, "num_hidden_layers": 1})
    s = setup(method, checkpointing=True)
    assert activation_bytes(d2, s) - activation_bytes(d1, s) == two - one


def build_and_prepare(method, layers):
    model = build_llama({**TINY, "num_hidden_layers": layers}, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_method(method).prepare(model, MethodConfig(name=method, rank=None if method == "full" else RANK))
    model.train()
    return model


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["full", "lora", "dora", "galore", "gradnormlorp"])
def test_weight_and_gradient_bytes_are_parameter_counts_times_dtype_size(method, dtype):
    model = prepared(method, torch.float32 if dtype == "fp32" else torch.bfloat16)
    s = setup(method, dtype)
    d = Dims.of(TINY)
    assert weight_bytes(d, s) == sum(p.numel() * p.element_size() for p in model.parameters())
    # (elements, bytes): peft keeps LoRA/DoRA adapters in float32 whatever the base weights' dtype
    trainable = sorted((p.numel(), p.element_size()) for p in model.parameters() if p.requires_grad)
    assert sorted(trainable_sizes(d, s)) == trainable


def test_per_layer_formula_by_hand_for_llama_60m():
    """fp32, sdpa, batch 4 x 256: 10 T h + 4 T f + 2 T + a T floats per layer (T = 1024, h 512, f 1376, a 8)."""
    from gnlorp.memory_model import layer_activation_bytes

    T = 4 * 256
    s = Setup(model="llama_60m", method="full", batch=4, seq_len=256)
    assert layer_activation_bytes(Dims.of("llama_60m"), s) == 4 * (10 * T * 512 + 4 * T * 1376 + 2 * T + 8 * T)


def test_peak_of_full_training_by_hand():
    """LLaMA-20M, full fp32 AdamW, batch 1 x 8: the peak is the optimizer step, weights + 2 moments + grads +
    torch AdamW's two temporaries of the largest parameter (the 32000 x 256 embedding)."""
    s = Setup(model="llama_20m", method="full", batch=1, seq_len=8)
    br = peak(s)
    n = 2 * 32000 * 256 + 256 + 4 * (2 * 256 + 4 * 256 * 256 + 3 * 688 * 256)
    assert br.weights == 4 * n
    assert br.peak_phase == "optimizer_step"
    steps = 4 * (3 + 4 * 9)  # torch.optim.AdamW's float32 step scalar per parameter: 3 + 9 per layer
    assert br.peak == 4 * n + (8 * n + steps) + 4 * n + 2 * 4 * 32000 * 256


def test_python_m_gnlorp_memory_peak_prints_the_breakdown(capsys):
    """`python -m gnlorp.memory peak ...` is the memory model's command: its JSON equals peak() for the setup."""
    import json

    from gnlorp.memory import main

    main(["peak", "--model", "llama_20m", "--method", "galore", "--rank", "64", "--batch", "2", "--seq-len", "128",
          "--json"])
    printed = json.loads(capsys.readouterr().out)
    expected = peak(Setup(model="llama_20m", method="galore", rank=64, batch=2, seq_len=128)).as_dict()
    assert printed == json.loads(json.dumps(expected)) and printed["peak"] > printed["weights"] > 0
