"""The peak memory of training a LLaMA: weights + optimizer states + the largest of what lives beside them
(saved activations, gradients, the optimizer step's and the projector refresh's temporaries), in bytes.

    python -m gnlorp.memory_model --model llama_60m --method gradnormlorp --rank 128 --batch 4 --seq-len 256

Every method of the registry (gnlorp/methods) is modelled, each in one family: full; peft's LoRA and DoRA; ReLoRA
and SwitchLoRA (optim/adapter_linear.FactorsLinear: frozen W, factors B A in W's dtype); GaLore and GradNormLoRP
(GaLoreAdamW); APOLLO and APOLLO-Mini (ApolloAdamW, APOLLO-Mini at rank 1); Fira (FiraAdamW).

Where each term comes from (T = batch x seq_len tokens, h hidden, f intermediate, a heads, V vocab, L layers,
b the weights' element size, which is also the activations'; HF transformers' LlamaForCausalLM, CPU):
- weights: every parameter after the method's preparation (LoRA's A and B beside the frozen W, float32 with peft,
  in b bytes for ReLoRA and SwitchLoRA; the DoRA and GradNormLoRP magnitudes), and the buffers the method's
  layers add: ReLoRA's merge count and seed, SwitchLoRA's candidate pools (min(m, n) (m + n) b per target: in CPU
  memory with offload_candidates, the default, the same memory on a CPU; on a GPU they are host memory) and its
  swap bookkeeping. APOLLO and Fira leave the model as it is.
- optimizer states: `gnlorp.methods.estimate_state_bytes` (measured = analytic in tests/unit/test_memory.py).
- saved activations (what autograd keeps from the forward for the backward), per decoder layer:
  each RMSNorm keeps its input in float32 (4 T h; in fp32 that is the residual stream itself), the normalized
  input and the output (2 b T h), and its row rsqrt (4 T); q and k after RoPE and v (3 b T h); the attention
  output, which feeds o_proj (b T h), plus SDPA's float32 log-sum-exp (4 a T; CPU flash kernel) or eager's
  softmax (4 a T S, and its b-byte cast when b != 4); the MLP keeps gate, silu(gate), up and their product
  (4 b T f). fp32: 10 T h + 4 T f + 2 T (+ a T) elements, as tests/unit/test_memory_model.py counts with autograd's
  saved-tensor hooks. Around the layers: the final norm (4 T h + 2 b T h + 4 T), the loss's float32
  log-softmax (4 T V), RoPE's cos/sin (2 b S d), the token ids and labels (int64). Per target Linear, the
  methods add: GradNormLoRP two float32 m-vectors (row norm, g/norm), LoRA, ReLoRA and SwitchLoRA the rank-r
  hidden (b T r), DoRA that and the base and LoRA outputs (2 b T m) and three m-vectors; APOLLO and Fira nothing.
  Dropout on the factors' input (lora_dropout: ReLoRA's default 0.1; LoRA's and SwitchLoRA's 0) adds, per target,
  the dropout's noise and dropout(x) (2 b T n: CPU dropout multiplies by a b-byte noise tensor; a GPU's fused
  kernel keeps a 1-byte mask instead, so there this term is ~(b + 1) T n), and then, W being frozen, nothing keeps
  the norms' outputs, the MLP's product nor (eager) the attention output's copy: b T (2h + f (+ h)) fewer per layer.
  With activation checkpointing a layer keeps only its input (b T h), and its backward recomputes the layer.
- gradients: all trainable parameters (normal mode) or one parameter at a time (layer-wise: each is stepped
  and freed inside backward).
- transients (each phase's temporaries, the peak is the largest phase):
  forward: the logits (b T V, plus their float32 copy when b != 4) beside the saved activations; a
    GradNormLoRP layer's W = V diag(g/||V||) (b m n); DoRA's identity, LoRA product and norm input (~b(n^2 + 3mn)).
  backward: the head's log-softmax and loss gradients (2 x 4 T V); in a layer, the MLP's input gradients
    (3 b T f) and, with checkpointing, the recomputed layer; a GradNormLoRP weight's backward rebuilds W and
    forms dL/dW in float32 (b + 4 + (4 if b != 4) bytes per element beside its gradient).
  optimizer step (tests/unit/test_memory_model.py measures it: every storage a real step's ops allocate):
    torch.optim.AdamW (CPU, single-tensor, group by group) sqrt(v) and the denominator of each tensor beside the
    previous tensor's denominator (full, LoRA, DoRA, ReLoRA); SwitchLoRA's SwitchAdamW sqrt(v) / correction,
    m / denominator and that times the step size (3 per tensor, float32 for the factors, whose per-row step counts
    promote them; 8-bit: both moments dequantized to float32 too);
    torchao's AdamW8bit/4bit (its torch.compile'd single-tensor step, not measured here) taken as bitsandbytes'
    below; gnlorp's GaLoreAdamW (and APOLLO's, Fira's) foreach step two of each dense group (GradNormLoRP's
    float32 magnitudes in the decay group), then each target weight in turn, its sub-steps one after another:
      the refresh: GaLore's finiteness check of G (torch.isfinite: |G| and three boolean maps, (b + 3) m n), then
        its SVD (exact: LAPACK gesdd on a float32 copy, ~4(mn + mk + kn + 3k^2 + max(m,n,4k^2+4k)), k = min(m,n);
        randomized, torch.svd_lowrank with q = 2r and two power iterations: ~4(2mq + 2nq) + gesdd of q x n;
        the check is the larger for a randomized SVD at LLaMA shapes), for GaLore, GradNormLoRP, Fira (and
        APOLLO with proj=svd, exact);
        APOLLO's seeded Gaussian projector, no SVD: the float32 draw and its scaled copy (2 x 4 x its m r or r n);
      Adam on R: the projected gradient and its direction (2 b |R|; 8-bit: a zero target plus bitsandbytes'
        CPU kernel, which dequantizes both moments and the gradient to float32 (and the weight when b != 4) and
        forms the denominator, 5-6 x 4 |R|);
      the full-size work: GaLore and GradNormLoRP none (one GEMM adds back(direction) into W); APOLLO G times the
        channel- (or tensor-) wise scaling factor and the norm-growth limiter's division of it (2 b m n, beside
        R and the direction; the limiter divides from the second step on and is assumed on, the default of both
        APOLLO and APOLLO-Mini); Fira the residual G - scale back(R), its phi-scaled copy, then scale back(direction)
        and its sum with the correction while the residual and the correction live (4 b m n; the limiter's
        division, 3). The norms (phi, the channel factors, the limiters' scalars) are vectors and left out.
    bitsandbytes' AdamW8bit (8-bit dense tensors, one at a time) as that CPU kernel (5-6 x 4 N).
  after the step (no gradients, no activations left): ReLoRA's merge every K steps (W += B A in place and A's
    float32 re-initialization, 4 r n), a SwitchLoRA swap (at most r vectors per factor: ~b(3 r n + m r)); never
    the peak, listed for completeness.
What this leaves out, on a CPU: the allocator's retained and fragmented pages, the oneDNN/MKL scratch and
thread buffers, Python and autograd-graph objects; the benchmark (gnlorp/bench/peak_memory.py) measures them.
Approximations beside those: the SVDs' LAPACK work arrays are counted from the formula (no test sees inside a
kernel), the torchao and bitsandbytes steps from their documented arithmetic, a SwitchLoRA swap at its bound.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from .errors import UserError
from .methods import METHODS, SPECS  # the registry (light: no torch): every registered method is modelled
from .methods.apollo import trained_rank

ATTENTIONS = ("sdpa", "eager")
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2}
GIB = 1024**3
# How each method is modelled, by what its layers and its optimizer do (module docstring). Every registered method
# is in exactly one family (tests/unit/test_memory_model.py): a new method fails that test until it is modelled.
PEFT = ("lora", "dora")                 # peft's LoRA layers: frozen W, float32 factors
FACTORS = ("relora", "switchlora")      # optim/adapter_linear.FactorsLinear: frozen W, factors in W's dtype
ADAPTERS = PEFT + FACTORS               # a frozen W beside trainable factors
DROPOUT = ("lora", "relora", "switchlora")  # dropout(x) on the factors' input (lora_dropout) is modelled
GALORE = ("galore", "gradnormlorp")     # GaLoreAdamW's projected Adam (GradNormLoRP on V of W = V g/||V||)
APOLLO = ("apollo", "apollo_mini")      # ApolloAdamW: random projection, channel-/tensor-wise scaling of G
FIRA = ("fira",)                        # FiraAdamW: GaLore plus the scaled residual G - back(R)
PROJECTED = GALORE + APOLLO + FIRA      # GaLoreAdamW and its subclasses: target weights stepped one by one
DENSE = ("full",)
FAMILIES = {"dense": DENSE, "peft": PEFT, "factors": FACTORS, "galore": GALORE, "apollo": APOLLO, "fira": FIRA}


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int

    @classmethod
    def of(cls, model: str | dict) -> "Dims":
        """The dims of a LLaMA: a gnlorp/conf/model name or a dict of its fields; UserError for anything else."""
        from .models import llama_model_cfg

        c = llama_model_cfg(model) if isinstance(model, str) else dict(model)
        name = c.get("name", model if isinstance(model, str) else "the model")
        if c.get("kind", "llama") != "llama":
            raise UserError(f"model {name} is an encoder (kind: {c.get('kind')}); the peak model is for LLaMA "
                            f"pre-training: choose a llama_* model, e.g. --model llama_60m.")
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        bad = [k for k in keys if not isinstance(c.get(k), int) or isinstance(c.get(k), bool) or c.get(k) <= 0]
        if bad:
            raise UserError(f"model {name} lacks a positive integer {bad[0]}; fix gnlorp/conf/model/{name}.yaml.")
        return cls(*(c[k] for k in keys))

    def targets(self) -> list[tuple[int, int]]:
        """(out m, in n) of every Linear in one decoder layer: q, k, v, o, gate, up, down."""
        h, f = self.hidden, self.intermediate
        return [(h, h)] * 4 + [(f, h), (f, h), (h, f)]

    def dense_params(self) -> list[int]:
        """Element counts of the parameters outside the targets: embeddings, LM head, norms."""
        h, v = self.hidden, self.vocab
        return [v * h, v * h, h] + [h, h] * self.layers


@dataclass(frozen=True)
class Setup:
    model: str | dict = "llama_60m"
    method: str = "full"
    rank: int | None = None
    dtype: str = "fp32"              # the weights' (and activations', gradients', states') dtype: fp32 | bf16
    optim_bits: int = 32
    optim_library: str | None = None  # "torchao": torchao's AdamW8bit / AdamW4bit (method=full)
    batch: int = 4
    seq_len: int = 256
    layerwise: bool = False
    checkpointing: bool = False
    attention: str = "sdpa"
    svd: str = "auto"
    proj_type: str = "std"
    refresh: bool = True             # a projector refresh happens in the peak step (always in a run's first step)
    lora_dropout: float | None = None  # LoRA, ReLoRA, SwitchLoRA: dropout on the factors' input (None: the method's
                                       # default, ReLoRA's 0.1, the others' 0)
    proj: str = "random"             # APOLLO's projector: random (seeded Gaussian) or svd (GaLore's, exact SVD)

    def check(self) -> Dims:
        """The model's dims, once every setting is known to be usable (the model first: a bad model is named
        as such, whatever else is missing)."""
        d = Dims.of(self.model)
        if self.method not in METHODS:
            raise UserError(f"method={self.method!r} is not one of {', '.join(METHODS)}; pick one of them.")
        low_rank = SPECS[self.method].low_rank  # APOLLO-Mini is rank 1 by definition: no rank to give
        if low_rank and (self.rank is None or self.rank <= 0):
            raise UserError(f"method={self.method} needs a positive rank (--rank, e.g. 128), got "
                            f"{'none' if self.rank is None else self.rank}.")
        smallest = min(min(t) for t in d.targets())
        if low_rank and self.rank > smallest:
            raise UserError(f"rank={self.rank} is larger than the smallest target matrix dimension of "
                            f"{self.model if isinstance(self.model, str) else 'the model'} ({smallest}); "
                            f"choose rank <= {smallest}.")
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"dtype={self.dtype!r} is not fp32 or bf16; pass one of them.")
        if self.optim_bits not in (4, 8, 32):
            raise UserError(f"optim_bits={self.optim_bits} must be 4 (torchao), 8 or 32.")
        if self.optim_library not in (None, "torchao"):
            raise UserError(f"optim_library={self.optim_library!r} must be torchao or none (bitsandbytes).")
        if (self.optim_bits == 4 and self.optim_library is None) or (self.optim_bits == 32 and self.optim_library):
            raise UserError(f"optim_bits={self.optim_bits} with optim_library={self.optim_library}: 4-bit states are "
                            "torchao's (--optim-library torchao), and torchao keeps 4- or 8-bit ones.")
        if self.optim_library == "torchao" and (self.method != "full" or self.layerwise):
            raise UserError(f"optim_library=torchao is plain AdamW on every parameter: method=full without "
                            f"--layerwise, not method={self.method}{' layer-wise' if self.layerwise else ''}.")
        if self.attention not in ATTENTIONS:
            raise UserError(f"attention={self.attention!r} must be sdpa or eager.")
        if self.batch <= 0 or self.seq_len <= 0:
            raise UserError(f"batch={self.batch} and seq_len={self.seq_len} must be positive integers.")
        if self.lora_dropout is not None and not (self.method in DROPOUT or self.lora_dropout == 0):
            raise UserError(f"lora_dropout={self.lora_dropout}: the model counts dropout on the factors' input for "
                            f"{', '.join(DROPOUT)} only, not method={self.method}; leave it unset.")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout={self.lora_dropout} must be in [0, 1).")
        if self.method == "switchlora" and self.layerwise:
            raise UserError("method=switchlora has no layer-wise mode (its swaps need the whole step); drop --layerwise.")
        if self.method in FIRA and self.proj_type == "full":
            raise UserError("method=fira refuses proj_type=full (no per-channel scaling fits an r x r R); use std.")
        if self.proj not in ("random", "svd"):
            raise UserError(f"proj={self.proj!r} must be random or svd (APOLLO's projector).")
        return d


@dataclass
class Breakdown:
    weights: int
    gradients: int            # gradients alive at the peak phase
    optimizer_states: int
    activations: int          # saved for backward at the end of the forward
    transient: dict = field(default_factory=dict)   # phase -> bytes above weights + states
    peak_phase: str = ""
    peak: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- pieces
def _b(s: Setup) -> int:
    return DTYPE_BYTES[s.dtype]


def _r(s: Setup) -> int:
    """The rank the method trains at: APOLLO-Mini's is 1 by definition, full training has none (0)."""
    return trained_rank(s.method, s.rank or 0)


def _dropout(s: Setup) -> float:
    """The dropout on the factors' input: the setting, or the method's default (its settings class)."""
    if s.lora_dropout is not None:
        return float(s.lora_dropout)
    fields = {f.name: f.default for f in dataclasses.fields(SPECS[s.method].settings)}
    return float(fields.get("lora_dropout", 0.0)) if s.method in DROPOUT else 0.0


def layer_activation_bytes(d: Dims, s: Setup) -> int:
    """Bytes autograd saves in one decoder layer's forward (module docstring), without checkpointing."""
    b, T, h, f, a = _b(s), s.batch * s.seq_len, d.hidden, d.intermediate, d.heads
    norms = 2 * (4 * T * h + 2 * b * T * h + 4 * T)
    qkv = 3 * b * T * h
    if s.attention == "sdpa":
        attn = b * T * h + 4 * s.batch * a * s.seq_len
    else:
        probs = s.batch * a * s.seq_len * s.seq_len
        attn = b * T * h + 4 * probs + (b * probs if b != 4 else 0)
    mlp = 4 * b * T * f
    inputs = norms + qkv + attn + mlp - _unsaved_inputs(d, s)
    return inputs + sum(method_activation_bytes(m, n, s) for m, n in d.targets())


def _unsaved_inputs(d: Dims, s: Setup) -> int:
    """Inputs of the target Linears that nothing saves once W is frozen and the factors see dropout(x) instead of x:
    the two norms' outputs, the MLP's product and (eager) the attention output's contiguous copy; SDPA keeps its
    output for its own backward."""
    if s.method not in ADAPTERS or _dropout(s) == 0:
        return 0
    b, T, h = _b(s), s.batch * s.seq_len, d.hidden
    return b * T * (2 * h + d.intermediate + (h if s.attention == "eager" else 0))


def method_activation_bytes(m: int, n: int, s: Setup) -> int:
    """What a method's Linear saves beyond a plain nn.Linear (which saves its input, already counted)."""
    b, T, r = _b(s), s.batch * s.seq_len, _r(s)
    if s.method == "gradnormlorp":
        return 2 * 4 * m
    if s.method == "lora" or s.method in FACTORS:
        # the rank-r hidden A x; with dropout, on the CPU, the dropout's noise (the input's dtype: a bool mask on a
        # GPU's fused kernel, 1 byte) and dropout(x), both n wide (x is still saved by W's product)
        return b * T * r + (2 * b * T * n if _dropout(s) > 0 else 0)
    if s.method == "dora":
        return b * T * r + 2 * b * T * m + 3 * b * m
    return 0


def head_activation_bytes(d: Dims, s: Setup) -> int:
    """Saved outside the decoder layers: final norm, float32 log-softmax, RoPE cos/sin, token ids, labels."""
    b, T, h = _b(s), s.batch * s.seq_len, d.hidden
    head_dim = h // d.heads
    return (4 * T * h + 2 * b * T * h + 4 * T) + 4 * T * d.vocab + 2 * b * s.seq_len * head_dim + 2 * 8 * T + 4


def activation_bytes(d: Dims, s: Setup) -> int:
    per_layer = _b(s) * s.batch * s.seq_len * d.hidden if s.checkpointing else layer_activation_bytes(d, s)
    return d.layers * per_layer + head_activation_bytes(d, s)


def weight_bytes(d: Dims, s: Setup) -> int:
    """Every parameter: the model's in b bytes, LoRA/DoRA adapters in float32 (peft's autocast_adapter_dtype),
    ReLoRA's and SwitchLoRA's factors in b bytes, GradNormLoRP's magnitudes in float32 (WeightNormLinear keeps g in
    float32 whatever the weights' dtype); and the buffers the method's layers add (buffer_bytes)."""
    frozen = d.layers * sum(m * n for m, n in d.targets()) if s.method in ADAPTERS else 0
    return _b(s) * frozen + sum(n * b for n, b in trainable_sizes(d, s)) + buffer_bytes(d, s)


def buffer_bytes(d: Dims, s: Setup) -> int:
    """Buffers of the method's layers: ReLoRA's merge count and seed (int64); SwitchLoRA's candidate pools
    (min(m, n) vectors of length n for A and of length m for B, in b bytes; with offload_candidates, the default,
    in CPU memory, which on a CPU is the same memory) and its swap bookkeeping (methods/switchlora.other_bytes)."""
    if s.method == "relora":
        return d.layers * len(d.targets()) * 2 * 8
    if s.method == "switchlora":
        r = _r(s)
        per = sum(min(m, n) * (m + n) * _b(s) + 2 * r * 8 + 2 * r * 4 + 2 * 8 + 2 * 8 + 8 for m, n in d.targets())
        return d.layers * per
    return 0


def trainable_sizes(d: Dims, s: Setup) -> list[tuple[int, int]]:
    """(elements, element bytes) of every trainable parameter (frozen base weights of the adapters excluded)."""
    b, r = _b(s), _r(s)
    sizes = [(n, b) for n in d.dense_params()]
    for _ in range(d.layers):
        for m, n in d.targets():
            if s.method in ADAPTERS:
                ab = 4 if s.method in PEFT else b
                sizes += [(r * n, ab), (m * r, ab)] + ([(m, 4)] if s.method == "dora" else [])
            else:
                sizes.append((m * n, b))
                if s.method == "gradnormlorp":
                    sizes.append((m, 4))
    return sizes


@lru_cache(maxsize=64)
def _state_bytes(model_key: str, method: str, rank, optim_bits: int, b: int, *, proj_type: str, layerwise: bool,
                 optim_library: str | None = None) -> int:
    from .methods import estimate_state_bytes
    from .methods.base import MethodConfig
    from .models import build_llama

    model = build_llama(json.loads(model_key), device="meta")
    cfg = MethodConfig(name=method, rank=rank, optim_bits=optim_bits, proj_type=proj_type, layerwise=layerwise,
                       optim_library=optim_library)
    return estimate_state_bytes(model, cfg, element_bytes=b)


def state_bytes(s: Setup) -> int:
    from .models import llama_model_cfg

    cfg = llama_model_cfg(s.model) if isinstance(s.model, str) else dict(s.model)
    return _state_bytes(json.dumps(cfg, sort_keys=True), s.method, s.rank, s.optim_bits, _b(s), proj_type=s.proj_type,
                        layerwise=s.layerwise, optim_library=s.optim_library)


def gesdd_bytes(m: int, n: int) -> int:
    """LAPACK gesdd (torch.linalg.svd, full_matrices=False) on an m x n float32 matrix: the copy it overwrites,
    U, S, Vh and its minimal work array (3k^2 + max(max(m,n), 4k^2 + 4k) floats, 8k ints)."""
    k = min(m, n)
    return 4 * (m * n + m * k + k + k * n + 3 * k * k + max(m, n, 4 * k * k + 4 * k)) + 4 * 8 * k


def refresh_bytes(m: int, n: int, s: Setup) -> int:
    """Temporary bytes of one projector refresh of an m x n gradient (gnlorp.optim.projector._svd): first its
    finiteness check, torch.isfinite(G) = (G == G) * (|G| != inf), whose |G| (b bytes) and three boolean maps live
    together ((b + 3) m n); then the float32 copy (when b != 4) and the SVD."""
    from .optim.projector import choose_svd

    check = (_b(s) + 3) * m * n
    cast = 4 * m * n if _b(s) != 4 else 0
    if choose_svd((m, n), s.rank, s.svd) == "exact":
        return max(check, cast + gesdd_bytes(m, n))
    q = min(2 * s.rank, m, n)
    return max(check, cast + 4 * (2 * m * q + 2 * n * q) + gesdd_bytes(q, n))


def _side(m: int, n: int, s: Setup) -> str:
    """The projected side of an m x n target: APOLLO projects the smaller side (std) whatever proj_type says."""
    from .optim.projector import projection_side

    return projection_side((m, n), "std" if s.method in APOLLO else s.proj_type)


def _lowrank_elems(m: int, n: int, s: Setup) -> int:
    from .optim.projector import low_rank_shape

    lo = low_rank_shape((m, n), _r(s), _side(m, n, s))
    return lo[0] * lo[1]


def _bnb8_bytes(numel: int, b: int) -> int:
    """bitsandbytes' CPU 8-bit Adam on one tensor: both moments, the gradient, the weight (if not float32),
    sqrt(v) and the denominator, all float32."""
    return 4 * numel * (5 + (b != 4))


def _dense_step_bytes(numel: int, s: Setup) -> int:
    """One dense parameter stepped alone: bitsandbytes' 8-bit kernel, or GaLoreAdamW's float denominator."""
    if s.optim_bits == 8 and numel >= 4096:
        return _bnb8_bytes(numel, _b(s))
    return _b(s) * numel


def _switch_adam_bytes(numel: int, nb: int, s: Setup) -> int:
    """SwitchAdamW's step of one tensor (adam_math.adamw_step): sqrt(v) / its bias correction (the denominator),
    m / denominator and that times the step size, 3 tensors of the moments' dtype, or float32 (nb = 4) for the
    factors, whose step counts are float32 vectors (one per row of A, per column of B) that promote the division;
    8-bit moments are first dequantized to float32 (2 more) and the arithmetic is float32."""
    if s.optim_bits == 8 and numel >= 4096:
        return 5 * 4 * numel
    return 3 * (4 if s.optim_bits == 8 else nb) * numel


def apollo_refresh_bytes(m: int, n: int, s: Setup) -> int:
    """APOLLO's projector draw (optim/apollo.random_projection): a float32 Gaussian of the projector's shape
    (m x r or r x n) and its scaled copy (then cast to b bytes, after the draw is freed); no SVD. With proj=svd,
    GaLore's exact SVD (apollo.py builds its groups with svd=exact)."""
    if s.proj == "svd":
        return refresh_bytes(m, n, dataclasses.replace(s, svd="exact"))
    proj = (m if _side(m, n, s) == "left" else n) * _r(s)
    return 2 * 4 * proj


def _projected_step_bytes(m: int, n: int, s: Setup) -> int:
    """A projected weight's step, its sub-steps in turn (each one's temporaries freed before the next): the
    refresh (if any); Adam on R (the projected gradient and Adam's direction; 8-bit: a zero target plus the
    kernel's float32 copies); then what the method does with G at full size:
      GaLore, GradNormLoRP: nothing (one GEMM adds the projected-back direction into W);
      APOLLO: G times the scaling factor (m x n) and the norm-growth limiter's division of it (another m x n,
        every step but the first; the limiter is on by default for APOLLO and APOLLO-Mini and assumed on);
      Fira: the residual G - scale back(R), its scaled copy (phi), then scale back(direction) and its sum with
        the correction while the residual and the correction are alive: 4 m x n (the limiter's division, 3).
    Norms (the channel factors, the limiter's) are vectors or scalars and left out."""
    b, lo = _b(s), _lowrank_elems(m, n, s)
    if not s.refresh:
        svd = 0
    elif s.method in APOLLO:
        svd = apollo_refresh_bytes(m, n, s)
    else:
        svd = refresh_bytes(m, n, s)
    adam = 2 * b * lo + (_bnb8_bytes(lo, b) if s.optim_bits == 8 and lo >= 4096 else 0)
    full_size = {"apollo": 2, "apollo_mini": 2, "fira": 4}.get(s.method, 0) * b * m * n
    return max(svd, adam, 2 * b * lo + full_size)


def step_transient_bytes(d: Dims, s: Setup) -> int:
    """Temporaries of the optimizer step over all parameters (normal mode), the largest moment."""
    b = _b(s)
    if s.method not in PROJECTED:
        sizes = trainable_sizes(d, s)
        if s.optim_library == "torchao":  # torchao's compiled single-tensor step: assumed to need what bitsandbytes' does
            return max(_bnb8_bytes(n, _b(s)) for n, _ in sizes)
        if s.method == "switchlora":  # SwitchAdamW, one tensor at a time; the factors' steps are float32 vectors
            factors = [k * _r(s) for m, n in d.targets() for k in (m, n)]
            return max([_switch_adam_bytes(n, b, s) for n in d.dense_params()] +
                       [_switch_adam_bytes(n, 4, s) for n in factors])
        if s.optim_bits == 8:  # bitsandbytes AdamW8bit, one tensor at a time
            return max(_dense_step_bytes(n, s) for n, _ in sizes)
        return _torch_adamw_bytes(d, s)
    # GaLoreAdamW (and APOLLO's, Fira's): the foreach dense step over each group (decay: embeddings, head and
    # GradNormLoRP's magnitudes, float32; plain: the norms), then each projected weight in turn.
    dense = d.dense_params()
    magnitudes = 4 * d.layers * sum(m for m, _ in d.targets()) if s.method == "gradnormlorp" else 0
    if s.optim_bits == 8:
        dense_tmp = max(_dense_step_bytes(n, s) for n in dense)
    else:
        dense_tmp = max(2 * (b * sum(dense[:2]) + magnitudes), 2 * b * sum(dense[2:]))
    return max(dense_tmp, max(_projected_step_bytes(m, n, s) for m, n in d.targets()))


def _torch_adamw_bytes(d: Dims, s: Setup) -> int:
    """torch.optim.AdamW on CPU (single-tensor, group by group): each tensor's sqrt(v) and denominator, beside
    the previous tensor's denominator, which lives until the next one replaces it. Its groups in parameter order:
    decay, the 2-D tensors (embeddings, the targets' W or factors A then B, the head); plain, the 1-D ones
    (DoRA's magnitudes, the norms)."""
    b, r = _b(s), _r(s)
    ab = 4 if s.method in PEFT else b
    decay, plain = [d.vocab * d.hidden * b], []
    for _ in range(d.layers):
        for m, n in d.targets():
            decay += [m * n * b] if s.method not in ADAPTERS else [r * n * ab, m * r * ab]
            plain += [4 * m] if s.method == "dora" else []
        plain += [d.hidden * b] * 2
    decay.append(d.vocab * d.hidden * b)
    plain.append(d.hidden * b)
    return max(2 * t + (g[i - 1] if i else 0) for g in (decay, plain) for i, t in enumerate(g))


def param_step_bytes(d: Dims, s: Setup) -> int:
    """Layer-wise mode: the largest one parameter's gradient plus its step's temporaries."""
    b = _b(s)
    worst = max(n * b + _dense_step_bytes(n, s) for n in d.dense_params())
    for m, n in d.targets():
        if s.method in PROJECTED:
            worst = max(worst, m * n * b + _projected_step_bytes(m, n, s))
        elif s.method == "full":
            worst = max(worst, m * n * b + _dense_step_bytes(m * n, s))
    return worst


def after_step_bytes(d: Dims, s: Setup) -> int:
    """After the step and zero_grad (no gradients, no activations): ReLoRA's merge every K steps (W += B A in
    place, one GEMM, and A's float32 re-initialization, r x n); a SwitchLoRA swap of k <= r vectors per factor
    (the new and old vectors, their difference, the other factor's k columns: b(3 k n + m k), k = r as the bound)."""
    r, b = _r(s), _b(s)
    if s.method == "relora":
        return max(4 * r * n for _, n in d.targets())
    if s.method == "switchlora":
        return max(b * (3 * r * k + o * r) for m, n in d.targets() for k, o in ((n, m), (m, n)))
    return 0


def _layer_backward_transient(d: Dims, s: Setup) -> int:
    """Inside one decoder layer's backward: the MLP's input gradients; GradNormLoRP's rebuilt W and float32
    dL/dW; the recomputed layer under checkpointing."""
    b, T = _b(s), s.batch * s.seq_len
    extra = 3 * b * T * d.intermediate
    if s.method == "gradnormlorp":
        m, n = max(d.targets(), key=lambda t: t[0] * t[1])
        extra += m * n * (b + 4 + (4 if b != 4 else 0))
    if s.checkpointing:
        extra += layer_activation_bytes(d, s)
    return extra


def _forward_transient(d: Dims, s: Setup) -> int:
    b, T, V = _b(s), s.batch * s.seq_len, d.vocab
    logits = b * T * V + (4 * T * V if b != 4 else 0)
    m, n = max(d.targets(), key=lambda t: t[0] * t[1])
    layer = 0
    if s.method == "gradnormlorp":
        layer = b * m * n
    elif s.method == "dora":
        layer = b * (n * n + 3 * m * n)
    if s.checkpointing:
        layer += layer_activation_bytes(d, s)  # the layer being run (its saved tensors are dropped after it)
    return max(logits, layer)


# ----------------------------------------------------------------------------------------- the peak
def peak(s: Setup) -> Breakdown:
    """The breakdown of the training peak (module docstring); `peak` = weights + states + the largest phase."""
    d = s.check()
    b, T, V = _b(s), s.batch * s.seq_len, d.vocab
    W, O, A = weight_bytes(d, s), state_bytes(s), activation_bytes(d, s)
    sizes = trainable_sizes(d, s)
    G = sum(n * nb for n, nb in sizes)
    layer_act = b * T * d.hidden if s.checkpointing else layer_activation_bytes(d, s)
    head_A = head_activation_bytes(d, s)
    phases = {"forward": A + _forward_transient(d, s), "backward_head": A + 2 * 4 * T * V}

    if s.layerwise:
        # every gradient is stepped and freed as soon as it is complete: one at a time beside the activations
        phases["backward_layers"] = A - 4 * T * V + _layer_backward_transient(d, s) + param_step_bytes(d, s)
        grads_at_peak = 0
    else:
        head_grad = b * (V * d.hidden + d.hidden)     # LM head and final norm
        grads = head_grad
        live_act = A - 4 * T * V - (head_A - 4 * T * V)
        worst = live_act + grads + b * T * d.hidden
        layer_grad = (G - b * sum(d.dense_params())) // d.layers + 2 * b * d.hidden
        for _ in range(d.layers):
            worst = max(worst, live_act + grads + layer_grad + _layer_backward_transient(d, s))
            live_act -= layer_act
            grads += layer_grad
        phases["backward_layers"] = max(worst, grads + b * V * d.hidden)  # the embedding's dense gradient last
        phases["optimizer_step"] = G + step_transient_bytes(d, s)
        grads_at_peak = G
    if s.method in FACTORS:
        phases["after_step"] = after_step_bytes(d, s)
    phase = max(phases, key=phases.get)
    return Breakdown(
        weights=W, gradients=grads_at_peak if phase in ("optimizer_step", "backward_layers") else 0,
        optimizer_states=O, activations=A, transient=phases, peak_phase=phase, peak=W + O + phases[phase],
    )


def format_breakdown(s: Setup, br: Breakdown) -> str:
    mib = 1024**2
    states = f"{s.optim_bits}-bit states" + (" (torchao)" if s.optim_library else "")
    lines = [f"{s.model} {s.method} r={1 if s.method == 'apollo_mini' else s.rank} {s.dtype} {states}, batch {s.batch} x {s.seq_len}, "
             f"{'layer-wise' if s.layerwise else 'normal'}, checkpointing {'on' if s.checkpointing else 'off'}",
             f"  weights            {br.weights / mib:12.1f} MiB",
             f"  optimizer states   {br.optimizer_states / mib:12.1f} MiB",
             f"  saved activations  {br.activations / mib:12.1f} MiB"]
    for name, v in br.transient.items():
        lines.append(f"  phase {name:<14}{v / mib:10.1f} MiB above weights + states")
    lines.append(f"  peak ({br.peak_phase})  {br.peak / mib:10.1f} MiB = {br.peak / GIB:.2f} GiB")
    return "\n".join(lines)


def main(argv=None) -> None:
    from .errors import one_line_argument_parser

    ap = one_line_argument_parser(prog="python -m gnlorp.memory peak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama_60m")
    ap.add_argument("--method", default="gradnormlorp", choices=METHODS)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--optim-bits", type=int, default=32, choices=(4, 8, 32))
    ap.add_argument("--optim-library", default=None, choices=("torchao",),
                    help="torchao's AdamW8bit / AdamW4bit (method full); default: bitsandbytes for 8-bit")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--layerwise", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
    ap.add_argument("--svd", default="auto", choices=("exact", "randomized", "auto"))
    ap.add_argument("--lora-dropout", type=float, default=None,
                    help="LoRA, ReLoRA, SwitchLoRA: dropout on the factors' input (default: the method's)")
    ap.add_argument("--proj", default="random", choices=("random", "svd"), help="APOLLO's projector")
    ap.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    a = ap.parse_args(argv)
    s = Setup(model=a.model, method=a.method, rank=a.rank, dtype=a.dtype, optim_bits=a.optim_bits,
              optim_library=a.optim_library, batch=a.batch,
              seq_len=a.seq_len, layerwise=a.layerwise, checkpointing=a.checkpointing, attention=a.attention,
              svd=a.svd, lora_dropout=a.lora_dropout, proj=a.proj)
    br = peak(s)
    print(json.dumps(br.as_dict(), indent=2) if a.json else format_breakdown(s, br))


if __name__ == "__main__":
    from .errors import run_command

    run_command(main)
