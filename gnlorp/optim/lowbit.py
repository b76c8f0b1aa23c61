"""torchao's low-bit AdamW (AdamW8bit, AdamW4bit), imported in one place: from torchao.optim (>= 0.11) or, in older
releases, torchao.prototype.low_bit_optim (gnlorp/__init__.py drops torchao's import-time notices about its
CUDA-only native libraries, which these optimizers, Python + torch.compile, never use).

The states (torchao/optim/subclass_{8,4}bit.py) of a parameter with N elements, N >= 4096 and divisible by the
block: 8-bit, N uint8 codes + N/256 float32 block scales + its own 256-entry float32 map per moment; 4-bit, N/2
bytes of packed codes + N/128 float32 scales + a 16-entry float32 map per moment. Smaller (or indivisible)
tensors keep plain moments in the parameter's dtype. Each parameter also has a float32 `step` tensor.
gnlorp.state_bytes.torchao_adam_bytes is that arithmetic; tests/unit/test_lowbit.py checks it against torchao.
"""

from __future__ import annotations

import warnings

BLOCK_SIZE = {8: 256, 4: 128}  # torchao's defaults for AdamW8bit / AdamW4bit
MIN_SIZE = 4096               # "follow bitsandbytes, only quantize tensors >= 4096 values"
QMAP_ENTRIES = {8: 256, 4: 16}  # float32 entries of the map each quantized moment carries


def torchao_adamw(bits: int):
    """torchao's AdamW class with `bits`-bit states (8 or 4); ImportError when torchao is missing."""
    if bits not in BLOCK_SIZE:
        raise ValueError(f"torchao's low-bit AdamW has 8- or 4-bit states, not {bits}-bit")
    # torch.compile's cache notes that torchao's state subclasses do not hash themselves: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching", category=UserWarning)
    try:
        from torchao import optim as ao
    except ImportError:
        from torchao.prototype import low_bit_optim as ao  # torchao < 0.11
    if not hasattr(ao, "AdamW8bit"):
        from torchao.prototype import low_bit_optim as ao
    return ao.AdamW8bit if bits == 8 else ao.AdamW4bit
