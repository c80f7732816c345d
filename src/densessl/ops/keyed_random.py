"""Random numbers keyed by sample, so that every process and every resume draws the same.

Randomness that a method needs per image (FLSL's sampling windows, Leopart's queue rows)
must not come from a per-process stream: with ``W`` processes holding ``B / W`` images each,
such a stream hands out different numbers than one process holding all ``B`` images, and
``2 x B/2`` no longer equals ``1 x B``. Instead each sample carries a 63-bit ``key`` drawn
from its own generator (:func:`densessl.data.views.multicrop.sample_generator`, seeded by
``(seed, epoch, index)``; collated as ``batch["key"]``), and the numbers here are a pure
function of ``(key, salt, position)``: a counter-based integer hash evaluated with tensor
ops on the keys' device. No generator state, no host-device sync, identical on CPU and CUDA.

The hash is a 32-bit finaliser (``x ^= x >> 16; x *= 0x45D9F3B`` twice, then a last
xor-shift) computed in int64 with every product below 2**59, so nothing overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["keyed_bits", "keyed_randint", "keyed_uniform"]

_MASK = 0xFFFFFFFF
_MULT = 0x45D9F3B
_GOLDEN = 0x9E3779B9


def _mix32(x: Tensor) -> Tensor:
    """Bijective 32-bit integer hash of ``x`` (int64 values in ``[0, 2**32)``)."""
    x = ((x >> 16) ^ x) * _MULT & _MASK
    x = ((x >> 16) ^ x) * _MULT & _MASK
    return (x >> 16) ^ x


def keyed_bits(keys: Tensor, salt: int, count: int) -> Tensor:
    """``count`` pseudo-random 32-bit integers per key.

    Args:
        keys: ``[B]`` int64 sample keys (any values; only their bits matter).
        salt: separates independent uses of one key (view, purpose); any Python int.
        count: numbers per key.

    Returns:
        ``[B, count]`` int64 in ``[0, 2**32)`` on ``keys.device``; a pure function of
        ``(key, salt, column)``.
    """
    if keys.dim() != 1:
        raise ValueError(f"keys must be [B], got {list(keys.shape)}")
    keys = keys.long()
    salt_hash = _mix32(torch.tensor(salt & _MASK, dtype=torch.long, device=keys.device))
    high = _mix32(((keys >> 32) & _MASK) ^ salt_hash)
    base = _mix32((keys & _MASK) ^ high)
    column = torch.arange(count, dtype=torch.long, device=keys.device)
    return _mix32((base[:, None] + (column + 1) * _GOLDEN) & _MASK)


def keyed_randint(keys: Tensor, salt: int, high: int, count: int) -> Tensor:
    """``[B, count]`` int64 in ``[0, high)`` (modulo of 32-bit hashes; bias < high / 2**32)."""
    if not 1 <= high <= 2**31:
        raise ValueError(f"high must be in [1, 2**31], got {high}")
    return keyed_bits(keys, salt, count) % high


def keyed_uniform(keys: Tensor, salt: int, count: int) -> Tensor:
    """``[B, count]`` float32 in ``[0, 1)`` (24 random bits each, exact in float32)."""
    return (keyed_bits(keys, salt, count) >> 8).float() / float(1 << 24)
