"""The tasks: GLUE fine-tuning (glue.py, metrics.py) and C4 pre-training (c4.py)."""

import os


def resolve_data_dir(data_dir: str | None, env_var: str) -> str | None:
    """task.data_dir if given, else the environment variable if set, else None (= the hub)."""
    for value in (data_dir, os.environ.get(env_var)):
        if value is not None and str(value).strip():
            return os.path.expanduser(str(value).strip())
    return None
