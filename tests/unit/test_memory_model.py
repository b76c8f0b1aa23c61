"""The peak-memory model's terms against independent counts: parameter (and buffer) bytes of the prepared model,
the tensors autograd really saves (saved-tensor hooks), the bytes the optimizer holds, the temporaries of a real
optimizer step (every storage its ops allocate, followed until freed: StepTemporaries), hand counts of the formulas.
Every registered method (gnlorp/methods) is checked."""

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gnlorp.memory_model import (
    FAMILIES, METHODS, Dims, Setup, activation_bytes, peak, state_bytes, step_transient_bytes, trainable_sizes,
    weight_bytes,
)
from gnlorp.methods import SPECS, MethodConfig, base_optimizer, get_method
from gnlorp.models import build_llama
from gnlorp.state_bytes import optimizer_state_bytes

TINY = dict(name="t", kind="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=2, vocab_size=1000, max_position_embeddings=64)
B, S, RANK = 2, 16, 8


def _rank(method):
    return RANK if SPECS[method].low_rank else None  # full training, and APOLLO-Mini (rank 1 by definition)


def prepared(method, dtype=torch.float32, attention="sdpa", checkpointing=False, dims=TINY, **settings):
    model = build_llama(dims, seed=0)
    model.config._attn_implementation = attention
    model.to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = MethodConfig(name=method, rank=_rank(method), **settings)
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
    return Setup(model=kw.pop("model", TINY), method=method, rank=_rank(method), dtype=dtype, batch=B, seq_len=S,
                 attention=attention, **kw)


def test_every_registered_method_is_modelled_once():
    from gnlorp.methods import METHODS as REGISTERED

    assert METHODS == REGISTERED
    families = [m for members in FAMILIES.values() for m in members]
    assert sorted(families) == sorted(REGISTERED)
    for method in METHODS:  # and has a peak at a CPU size
        assert peak(Setup(model="llama_20m", method=method, rank=64 if SPECS[method].low_rank else None)).peak > 0


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", list(METHODS))  # ReLoRA with its default dropout 0.1
def test_saved_activations_equal_autograds(method, attention):
    d = Dims.of(TINY)
    # DoRA's norm path (eye(n) through lora_A, lora_B) saves an n x n and an n x r tensor per target and is
    # discarded before backward (the model counts it as a forward temporary): the hooks see it too.
    discarded = 4 * d.layers * sum(n * n + n * RANK for _, n in d.targets()) if method == "dora" else 0
    assert activation_bytes(d, setup(method, attention=attention)) + discarded == saved_bytes(
        prepared(method, attention=attention))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["lora", "relora", "switchlora"])
def test_saved_activations_with_and_without_dropout_on_the_factors_input(method, attention, dropout):
    """Dropout on the factors' input saves its CPU noise and dropout(x) per target, and W frozen then saves no
    norm output, MLP product (nor eager's attention-output copy)."""
    assert activation_bytes(Dims.of(TINY), setup(method, attention=attention, lora_dropout=dropout)) == saved_bytes(
        prepared(method, attention=attention, lora_dropout=dropout))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["full", "gradnormlorp", "relora", "fira"])
def test_saved_activations_in_bf16_equal_autograds(method, attention):
    assert activation_bytes(Dims.of(TINY), setup(method, "bf16", attention)) == saved_bytes(
        prepared(method, torch.bfloat16, attention))


@pytest.mark.parametrize("method", ["full", "gradnormlorp", "relora"])
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
    model = get_method(method).prepare(model, MethodConfig(name=method, rank=_rank(method)))
    model.train()
    return model


def _buffer_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_weight_and_gradient_bytes_are_parameter_counts_times_dtype_size(method, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = prepared(method, torch_dtype)
    s = setup(method, dtype)
    d = Dims.of(TINY)
    # the buffers the method's layers add (ReLoRA's counters, SwitchLoRA's candidate pools and bookkeeping)
    added = _buffer_bytes(model) - _buffer_bytes(build_llama(TINY, seed=0).to(torch_dtype))
    assert weight_bytes(d, s) == sum(p.numel() * p.element_size() for p in model.parameters()) + added
    # (elements, bytes): peft keeps LoRA/DoRA adapters in float32 whatever the base weights' dtype
    trainable = sorted((p.numel(), p.element_size()) for p in model.parameters() if p.requires_grad)
    assert sorted(trainable_sizes(d, s)) == trainable


def _batch(dims):
    ids = torch.randint(0, dims["vocab_size"], (B, S), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("method", list(METHODS))
def test_optimizer_state_bytes_are_what_the_optimizer_holds(method):
    model = prepared(method)
    opt = get_method(method).build_optimizer(model, MethodConfig(name=method, rank=_rank(method)))
    model(**_batch(TINY)).loss.backward()
    opt.step()
    assert state_bytes(setup(method)) == optimizer_state_bytes(opt)


class StepTemporaries(TorchDispatchMode):
    """The peak, while on, of the bytes above the optimizer's state of: the state's storages still alive (a
    refreshed projector frees the old one) and every storage an op allocates (not a view nor an in-place result of
    its inputs), each followed until it is freed. What a kernel allocates inside itself (LAPACK's work arrays) is
    not seen: GaLore's SVD refresh is left to the formula."""

    def __init__(self, opt=None):
        super().__init__()
        state = base_optimizer(opt).state.values() if opt is not None else []
        tensors = [v for st in state for v in st.values() if torch.is_tensor(v)]
        self.live = {t.untyped_storage().data_ptr(): (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
                     for t in tensors}
        self.state = optimizer_state_bytes(opt) if opt is not None else 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs | set(self.live):
                self.live[t.untyped_storage().data_ptr()] = (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()) - self.state)
        return out


# vocab 32, intermediate 256: the targets, not the embeddings, are the largest tensors, so their steps show; one
# layer (fewer ops for the tracker to follow)
STEP_DIMS = {**TINY, "vocab_size": 32, "intermediate_size": 256, "num_hidden_layers": 1}


def measured_step_temporaries(method, update_proj_gap, dtype=torch.float32):
    """The temporaries of the second optimizer step (the first one creates the state)."""
    model = prepared(method, dtype, dims=STEP_DIMS)
    opt = get_method(method).build_optimizer(model, MethodConfig(name=method, rank=_rank(method),
                                                                 update_proj_gap=update_proj_gap))
    for step in range(2):
        model(**_batch(STEP_DIMS)).loss.backward()
        if step:
            tracker = StepTemporaries(opt)
            with tracker:
                opt.step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return tracker.peak


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_optimizer_step_temporaries_equal_a_real_steps(method, dtype):
    """Without a refresh: torch's AdamW (sqrt(v), the denominator, the previous tensor's), GaLoreAdamW's foreach
    dense groups, SwitchAdamW's three (float32 for the factors), APOLLO's scaled G and its limited copy, Fira's four
    m x n tensors. The model leaves out vectors and scalars (step counts, norms, channel factors): within 1%."""
    measured = measured_step_temporaries(method, 1000, torch.float32 if dtype == "fp32" else torch.bfloat16)
    modelled = step_transient_bytes(Dims.of(STEP_DIMS), setup(method, dtype, model=STEP_DIMS, refresh=False))
    assert modelled == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("method", ["apollo", "apollo_mini", "fira"])
def test_optimizer_step_temporaries_with_a_projector_refresh(method):
    """A refresh every step: APOLLO's seeded Gaussian draw (no SVD) and Fira's randomized SVD, each freed before
    the step's m x n temporaries, which stay the largest."""
    measured = measured_step_temporaries(method, update_proj_gap=1)
    modelled = step_transient_bytes(Dims.of(STEP_DIMS), setup(method, model=STEP_DIMS))
    assert modelled == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("shape, svd", [((256, 64), "exact"), ((256, 64), "randomized"), ((64, 256), "exact"),
                                        ((64, 256), "randomized"), ((64, 64), "randomized"), ((1376, 512), "randomized")])
def test_galore_refresh_bytes_bound_what_its_ops_allocate(shape, svd):
    """The refresh's visible temporaries (its ops' outputs; LAPACK's work arrays are inside a kernel) never exceed
    refresh_bytes, and equal it where the finiteness check of G is the largest part."""
    from gnlorp.memory_model import refresh_bytes
    from gnlorp.optim.projector import compute_projection

    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    tracker = StepTemporaries()
    with tracker:
        compute_projection(grad, RANK, "right" if shape[0] >= shape[1] else "left", svd)
    modelled = refresh_bytes(*shape, setup("galore", svd=svd))
    assert modelled >= tracker.peak
    if modelled == 7 * shape[0] * shape[1]:  # fp32: |G| and three boolean maps
        assert modelled == tracker.peak


@pytest.mark.parametrize("shape", [(256, 64), (64, 256)])
def test_apollo_refresh_is_a_seeded_draw_and_its_scaled_copy(shape):
    from gnlorp.memory_model import apollo_refresh_bytes
    from gnlorp.optim.apollo import random_projection

    grad, tracker = torch.zeros(shape), StepTemporaries()
    with tracker:
        random_projection(grad, RANK, "right" if shape[0] >= shape[1] else "left", seed=1)
    assert apollo_refresh_bytes(*shape, setup("apollo")) == tracker.peak


def test_per_layer_formula_by_hand_for_llama_60m():
    """fp32, sdpa, batch 4 x 256: 10 T h + 4 T f + 2 T + a T floats per layer (T = 1024, h 512, f 1376, a 8)."""
    from gnlorp.memory_model import layer_activation_bytes

    T = 4 * 256
    s = Setup(model="llama_60m", method="full", batch=4, seq_len=256)
    assert layer_activation_bytes(Dims.of("llama_60m"), s) == 4 * (10 * T * 512 + 4 * T * 1376 + 2 * T + 8 * T)


def test_peak_of_full_training_by_hand():
    """LLaMA-20M, full fp32 AdamW, batch 1 x 8: the peak is the optimizer step, weights + 2 moments + grads +
    torch AdamW's two temporaries of the largest parameter (the 32000 x 256 LM head) beside the denominator of the
    parameter before it (the last layer's 688 x 256 down_proj)."""
    s = Setup(model="llama_20m", method="full", batch=1, seq_len=8)
    br = peak(s)
    n = 2 * 32000 * 256 + 256 + 4 * (2 * 256 + 4 * 256 * 256 + 3 * 688 * 256)
    assert br.weights == 4 * n
    assert br.peak_phase == "optimizer_step"
    steps = 4 * (3 + 4 * 9)  # torch.optim.AdamW's float32 step scalar per parameter: 3 + 9 per layer
    assert br.peak == 4 * n + (8 * n + steps) + 4 * n + 2 * 4 * 32000 * 256 + 4 * 688 * 256


def test_python_m_gnlorp_memory_peak_prints_the_breakdown(capsys):
    """`python -m gnlorp.memory peak ...` is the memory model's command: its JSON equals peak() for the setup."""
    import json

    from gnlorp.memory import main

    main(["peak", "--model", "llama_20m", "--method", "galore", "--rank", "64", "--batch", "2", "--seq-len", "128",
          "--json"])
    printed = json.loads(capsys.readouterr().out)
    expected = peak(Setup(model="llama_20m", method="galore", rank=64, batch=2, seq_len=128)).as_dict()
    assert printed == json.loads(json.dumps(expected)) and printed["peak"] > printed["weights"] > 0
