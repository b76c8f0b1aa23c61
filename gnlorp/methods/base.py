"""What every method is given: one settings object, built from the Hydra config."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from torch import nn


@dataclass
class MethodConfig:
    name: str
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    rank: int | None = None
    scale: float = 1.0                 # GaLore's alpha
    update_proj_gap: int = 200         # T
    proj_type: str = "std"
    svd: str = "auto"                  # exact | randomized | auto (randomized where rank <= min(m,n)/8)
    optim_bits: int = 32               # 8: 8-bit blockwise Adam moments (bitsandbytes)
    layerwise: bool = False            # step each weight inside backward (GaLore §4.3)
    accumulation_steps: int = 1        # honoured by layer-wise mode
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str | None = None  # regex over module names; None: every Linear in the transformer blocks
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], **overrides) -> "MethodConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(cfg).items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay (GradNormLoRP's magnitudes do: gradnormlorp.py)."""
    return p.dim() < 2
