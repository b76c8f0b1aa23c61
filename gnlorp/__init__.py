"""gnlorp: GradNormLoRP, GaLore, LoRA and full training compared on equal terms."""

from pathlib import Path

__version__ = "0.1.0"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the Hydra configs ship in the package (pkg://gnlorp.conf)
