"""bitsandbytes, imported in one place: without its import-time notice about a 4-bit CPU kernel (from the
optional `kernels` package) that 8-bit optimizer states never use."""

from __future__ import annotations

import logging

_NOTICE = "Failed to load CPU gemm_4bit_forward"


class _DropFourBitKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOTICE)


def import_bitsandbytes():
    """The bitsandbytes module (ImportError or a native-library error propagate to the caller)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropFourBitKernelNotice())
    import bitsandbytes
    import bitsandbytes.functional  # noqa: F401

    return bitsandbytes


def adam_qmaps(device, held: dict) -> tuple:
    """bitsandbytes' signed and unsigned dynamic maps (the codes of Adam's first and second moments) on `device`,
    made once per device and kept in `held`: an 8-bit optimizer's `_qmaps`, part of the state it holds (as
    gnlorp.state_bytes.optimizer_state_bytes counts it)."""
    if device not in held:
        F = import_bitsandbytes().functional
        held[device] = (F.create_dynamic_map(signed=True).to(device), F.create_dynamic_map(signed=False).to(device))
    return held[device]
