"""gnlorp's Hydra configs (the YAML files here). Importing this package registers the settings schema
(gnlorp/schema.py) in Hydra's ConfigStore, so `pkg://gnlorp.conf` composes from anywhere: `python run.py`, a
notebook (hydra.initialize_config_module("gnlorp.conf") then hydra.compose("config", overrides=[...])), or a test."""

from ..schema import register

register()
