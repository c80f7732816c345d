"""Device and numeric precision, picked from the hardware.

On CPU, bf16 autocast only pays off where the chip has native bf16 (AVX512-BF16 or AMX):
there it trains ~2.5x faster than fp32, while on AVX2-only chips bf16 matmuls are hundreds of
times slower. fp16 on CPU is never used (about 1000x slower).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from densessl.ops.devices import parse_device


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the local CUDA device when present (``LOCAL_RANK`` under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return parse_device(name, "train.device")  # ConfigError: not a device, or not here


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matmuls natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for check in checks:
        fn = getattr(torch.cpu, check, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                continue
    return False


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Map ``train.precision`` to ``(autocast dtype or None, use a grad scaler)``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(
            f"train.precision must be one of auto, fp32, bf16, fp16; got {precision!r}"
        )
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16, False
        return (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError(
            "train.precision=fp16 needs a CUDA device (fp16 on CPU is ~1000x slower); "
            "use precision=auto or bf16"
        )
    return torch.float16, True


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` when a dtype is given, else a no-op."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
