"""gnlorp drops the libraries' import-time notices about things it never uses, and nothing else."""

import logging
import subprocess
import sys

import gnlorp  # noqa: F401  (installs the filters)


def _passes(logger: str, msg: str) -> bool:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, (), None)
    return logging.getLogger(logger).filter(record)


def test_the_notices_about_unused_kernels_are_dropped_and_other_records_pass():
    assert not _passes("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: %s")
    assert not _passes("torchao", "Failed to load libtorchao_ops_aten.so")
    assert _passes("bitsandbytes.backends.cpu.ops", "something else went wrong")
    assert _passes("bitsandbytes", "Failed to load CPU gemm_4bit_forward from kernels-community: %s")  # other logger


def test_peft_reading_the_deprecated_checkpointing_flag_warns_no_more_but_other_future_warnings_do():
    code = ("import warnings, gnlorp; "
            "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning); "
            "warnings.warn('another deprecation', FutureWarning)")
    p = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "another deprecation" in p.stderr and "is_gradient_checkpointing" not in p.stderr
