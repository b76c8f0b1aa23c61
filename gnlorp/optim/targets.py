"""Which linear layers a low-rank method targets: by default every attention and MLP projection inside the
transformer blocks (LLaMA `model.layers.N.*`, BERT/RoBERTa `encoder.layer.N.*`, GPT-2/Falcon/BLOOM
`transformer.h.N.*`). Embeddings, norms, biases, poolers and classifier heads stay dense. GPT-2's blocks hold
transformers' Conv1D, an nn.Linear with its weight stored transposed (in x out): GaLore projects any 2-D weight
and takes them (conv1d=True); the methods that replace or wrap nn.Linear refuse them by name."""

from __future__ import annotations

import re

from torch import nn

from .. import BLOCK_PATTERN, UserError  # the package root: light, and shared with the checks before the model loads

RUNNER_KNOB = "method.target_modules"  # how the runner's users choose targets; library callers: LIBRARY_KNOB
LIBRARY_KNOB = "the target_modules= argument"


def is_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (GPT-2): y = x W + b with a 2-D W of shape (in, out). Known by its class
    name and its `nf` (out features), so that this package imports nothing of transformers."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and weight is not None and weight.dim() == 2


def target_linear_names(model: nn.Module, pattern: str | None = None, *, conv1d: bool = False,
                        knob: str = RUNNER_KNOB, method: str | None = None) -> list[str]:
    """Names of the nn.Linear layers (and Conv1D ones where `conv1d`) whose name matches `pattern` (default:
    BLOCK_PATTERN). A Conv1D match without `conv1d`, or no match, is a one-line UserError naming `knob`."""
    regex = re.compile(pattern or BLOCK_PATTERN)
    shown = pattern or BLOCK_PATTERN
    matched = [(n, m) for n, m in model.named_modules() if regex.search(n) and (isinstance(m, nn.Linear) or is_conv1d(m))]
    convs = [n for n, m in matched if is_conv1d(m)]
    if convs and not conv1d:
        more = f" (and {len(convs) - 1} more)" if len(convs) > 1 else ""
        raise UserError(
            f"{convs[0]}{more}, matched by target_modules={shown!r}, is a transformers Conv1D (GPT-2's linear layer, "
            f"weight stored transposed), which {method or 'this method'} does not support (it replaces nn.Linear "
            f"layers); use GaLore for this model, or set {knob} to a regex that matches nn.Linear layers only."
        )
    if not matched:
        kinds = "nn.Linear or Conv1D" if conv1d else "nn.Linear"
        raise UserError(
            f"No {kinds} layer of the model matches target_modules={shown!r}; "
            f"set {knob} to a regex that matches the layers to adapt."
        )
    return [n for n, _ in matched]


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


def classifier_head_names(model: nn.Module) -> list[str]:
    """The modules of a classifier's head that LoRA trains densely: peft's SEQ_CLS `classifier` / `score`,
    and a BERT-style `pooler` (the dense + tanh that RoBERTa keeps inside its `classifier`)."""
    return [n for n, _ in model.named_modules() if n.split(".")[-1] in ("classifier", "score", "pooler")]


def check_rank(model: nn.Module, names: list[str], rank: int) -> None:
    """A rank must be positive and no larger than the smallest dimension of every target matrix."""
    if rank is None or int(rank) <= 0:
        raise UserError(f"rank={rank} is not a positive integer; choose e.g. rank=8.")
    smallest = min(min(model.get_submodule(n).weight.shape) for n in names)
    if rank > smallest:
        raise UserError(
            f"rank={rank} is larger than the smallest target matrix dimension ({smallest}); choose rank <= {smallest}."
        )
