"""LoRA through peft: frozen W, trainable B A, merged into W after training. Pre-training from scratch
keeps embeddings, norms and the LM head trainable (as the GaLore paper's LoRA/ReLoRA baselines do); a
classifier keeps peft's SEQ_CLS convention (head trainable, encoder frozen), where the head of a BERT-style
model includes its pooler: RoBERTa's `classifier` is dense + tanh + projection, BERT's is `pooler`
(dense + tanh) + `classifier`, so training both keeps the trainable head the same across the two. (A frozen
pooler left LoRA predicting the majority class on CoLA with MiniLM, whose pooler was never tuned with the
sentence-transformers encoder.)"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import LoRAFamily, setting
from .spec import Labels, MethodSpec


@dataclass
class LoRASettings(LoRAFamily):
    name: str = setting("lora", "LoRA through peft")


METHOD = MethodSpec("lora", LoRASettings, Labels(glue="LoRA", c4="LoRA", memory="LoRA"),
                    order=20, low_rank=True, color="#1f77b4")


def prepare(model, cfg, use_dora: bool = False):
    from peft import LoraConfig, get_peft_model

    from ..optim.targets import check_rank, classifier_head_names, is_causal_lm, target_linear_names

    names = target_linear_names(model, cfg.target_modules, method="LoRA")
    check_rank(model, names, cfg.rank)
    causal = is_causal_lm(model)
    config = LoraConfig(
        r=int(cfg.rank), lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=names,
        use_dora=use_dora, task_type=None if causal else "SEQ_CLS",
        modules_to_save=None if causal else classifier_head_names(model),
    )
    model = get_peft_model(model, config)
    if causal:
        targets = tuple(f"{n}." for n in names)
        for name, p in model.base_model.model.named_parameters():
            if "lora_" not in name and not name.startswith(targets):
                p.requires_grad_(True)
    return model


def build_optimizer(model, cfg):
    from .optimizers import build_adamw

    return build_adamw(model, cfg)


def merge(model):
    return model.merge_and_unload()


def state_bytes(model, cfg, element_bytes: int | None = None, magnitude: bool = False) -> int:
    """torch.optim.AdamW (a float32 step per tensor in 32-bit) over the factors A and B of every target (float32
    beside 16-bit weights) and the dense parameters LoRA trains (DoRA: `magnitude`, one per row)."""
    from ..state_bytes import adam_bytes, lora_dense, target_weights

    dense = lora_dense(model, target_weights(model, cfg), int(cfg.rank), element_bytes, magnitude)
    return adam_bytes(dense, cfg.optim_bits, step_scalars=True)
