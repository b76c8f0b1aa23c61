"""Which nn.Linear layers a low-rank method targets: by default every attention and MLP projection inside
the transformer blocks (LLaMA `model.layers.N.*`, BERT/RoBERTa `encoder.layer.N.*`). Embeddings, norms,
biases, poolers and classifier heads stay dense."""

from __future__ import annotations

import re

from torch import nn

from .. import BLOCK_PATTERN, UserError  # the package root: light, and shared with the checks before the model loads


def target_linear_names(model: nn.Module, pattern: str | None = None) -> list[str]:
    regex = re.compile(pattern or BLOCK_PATTERN)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.search(n)]
    if not names:
        raise UserError(
            f"No nn.Linear layer of the model matches target_modules={pattern or BLOCK_PATTERN!r}; "
            "set method.target_modules to a regex that matches the layers to adapt."
        )
    return names


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
