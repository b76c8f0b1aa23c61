"""What every method is given: one settings object, built from the Hydra config.

A MethodConfig holds the run-level values every method receives (learning rate, weight decay, rank, scale,
optimizer-state bits, accumulation) and the method's own settings (its schema.MethodSettings subclass, with
that class's defaults), all as attributes: a new method adds keys to its own settings class, never here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

RUN_VALUES = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "rank": None,
    "scale": 1.0,              # GaLore's alpha
    "optim_bits": 32,          # 8: 8-bit blockwise Adam moments (bitsandbytes); 4: torchao only
    "optim_library": None,     # None: torch.optim / bitsandbytes; "torchao": torchao.optim.AdamW8bit / AdamW4bit
    "accumulation_steps": 1,   # honoured by layer-wise mode
}


class MethodConfig:
    def __init__(self, name: str, **values: Any):
        from . import SPECS, spec

        settings_cls = spec(name).settings
        own = {f.name for f in dataclasses.fields(settings_cls)}
        other = {f.name for s in SPECS.values() for f in dataclasses.fields(s.settings)}
        unknown = set(values) - own - other - set(RUN_VALUES)
        if unknown:
            raise TypeError(f"MethodConfig: unknown key(s) {sorted(unknown)}")
        # keys of other methods (a benchmark passing GaLore's T to every method) do not apply to this one
        settings = settings_cls(**{k: v for k, v in values.items() if k in own and k != "name"})
        self.name = name
        self.__dict__.update({k: values.get(k, default) for k, default in RUN_VALUES.items()})
        self.__dict__.update({f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "name"})
        self.betas = tuple(self.betas)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], **overrides) -> "MethodConfig":
        values = dict(cfg)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __repr__(self) -> str:
        return f"MethodConfig({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"
