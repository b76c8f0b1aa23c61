"""gnlorp: GradNormLoRP, GaLore, LoRA and full training compared on equal terms."""

__version__ = "0.1.0"
