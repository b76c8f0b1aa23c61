"""LoRA and DoRA through peft: frozen W, trainable B A (DoRA adds a learned magnitude), merged into W
after training. Pre-training from scratch keeps embeddings, norms and the LM head trainable (as the
GaLore paper's LoRA/ReLoRA baselines do); a classifier keeps peft's SEQ_CLS convention (head trainable,
encoder frozen), where the head of a BERT-style model includes its pooler: RoBERTa's `classifier` is
dense + tanh + projection, BERT's is `pooler` (dense + tanh) + `classifier`, so training both keeps the
trainable head the same across the two. (A frozen pooler left LoRA predicting the majority class on
CoLA with MiniLM, whose pooler was never tuned with the sentence-transformers encoder.)"""

from peft import LoraConfig, get_peft_model
from torch import nn

from .base import MethodConfig
from .optimizers import build_adamw
from .targets import check_rank, classifier_head_names, is_causal_lm, target_linear_names


def prepare(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    names = target_linear_names(model, cfg.target_modules)
    check_rank(model, names, cfg.rank)
    causal = is_causal_lm(model)
    config = LoraConfig(
        r=int(cfg.rank), lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=names,
        use_dora=cfg.name == "dora", task_type=None if causal else "SEQ_CLS",
        modules_to_save=None if causal else classifier_head_names(model),
    )
    model = get_peft_model(model, config)
    if causal:
        targets = tuple(f"{n}." for n in names)
        for name, p in model.base_model.model.named_parameters():
            if "lora_" not in name and not name.startswith(targets):
                p.requires_grad_(True)
    return model


def build_optimizer(model: nn.Module, cfg: MethodConfig):
    return build_adamw(model, cfg)


def merge(model: nn.Module) -> nn.Module:
    return model.merge_and_unload()
