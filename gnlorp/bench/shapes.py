"""The weight shapes the benchmarks run on, read from gnlorp/conf/model/<name>.yaml through a model built on the
meta device (no memory): the attention and MLP matrices of the transformer blocks, i.e. exactly the
matrices the low-rank methods target. Embeddings, the LM head and norms are not among them (they stay on
dense AdamW for every method, so they add the same cost to all)."""

from __future__ import annotations

from collections import Counter


def block_shapes(model_name: str) -> list[tuple[str, tuple[int, int]]]:
    """(module name, (out, in)) of every target Linear of the model, in model order."""
    from ..methods import target_linear_names
    from ..models import build_llama, llama_model_cfg

    model = build_llama(llama_model_cfg(model_name), device="meta")
    return [(n, tuple(model.get_submodule(n).weight.shape)) for n in target_linear_names(model)]


def unique_shapes(model_name: str) -> list[tuple[int, int]]:
    """The distinct target shapes, in order of first appearance."""
    return list(Counter(shape for _, shape in block_shapes(model_name)))


def default_rank(model_name: str) -> int:
    """The benchmark's default rank: 128 for LLaMA-60M and larger (the papers' C4 setting), 64 for 20M,
    and a quarter of the hidden size for anything smaller."""
    from ..models import llama_model_cfg

    hidden = int(llama_model_cfg(model_name)["hidden_size"])
    return 128 if hidden >= 512 else 64 if hidden >= 256 else max(1, hidden // 4)
