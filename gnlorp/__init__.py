"""gnlorp: GradNormLoRP, GaLore, LoRA and full training compared on equal terms.

The package root holds what every layer shares and that needs nothing: the optimizer package (gnlorp/optim/,
which imports nothing else of gnlorp) raises the same UserError and selects the same default targets as the
rest. Keep it light: no import beyond the standard library."""

import warnings
from pathlib import Path

__version__ = "0.1.0"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the Hydra configs ship in the package (pkg://gnlorp.conf)

# the default low-rank targets: every nn.Linear (and, for GaLore, GPT-2's Conv1D) inside the transformer blocks:
# LLaMA `model.layers.N.`, BERT `encoder.layer.N.`, GPT-2 / Falcon / BLOOM `transformer.h.N.` (gnlorp/optim/targets.py
# selects them on a model, gnlorp/model_dims.py on its config before it loads)
BLOCK_PATTERN = r"(^|\.)(layers?|h)\.\d+\."


class UserError(Exception):
    """A problem with the user's input. The message is one sentence naming the problem and the fix;
    run.py prints it without a traceback and exits with status 2. (gnlorp.errors, where the rest of the
    error handling lives, re-exports it.)"""


# torchao (the optional `lowbit` extra: precision=ao8bit/ao4bit) is imported by transformers whenever it is installed,
# and says at import what we never use: its CUDA-only native libraries failing to load on a CPU, Triton missing, and
# torch's deprecation of its Enum registrations; bitsandbytes (on CPUs with AVX512-BF16) that a 4-bit matmul kernel,
# which no method here uses, is not installed. Those records are dropped; every other one passes.
_IMPORT_NOTICES = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
}


def _drop_import_notices() -> None:
    import logging

    for name, starts in _IMPORT_NOTICES.items():
        logging.getLogger(name).addFilter(lambda record, starts=starts: not str(record.msg).startswith(starts))


_drop_import_notices()
# peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every LoRA/DoRA run,
# nothing a user of gnlorp can act on)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
