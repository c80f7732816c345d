"""A small, strict MessagePack decoder (the subset Flax checkpoints use), so LOCA's Flax files
load without ``msgpack`` or JAX installed.

Spec: https://github.com/msgpack/msgpack/blob/master/spec.md — nil, booleans, integers,
floats, str, bin, arrays, maps and ext types. Ext payloads are handed to ``ext_hook(code,
payload)``. Decoding is pure data: nothing is imported or executed; a truncated or malformed
file raises ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["unpack"]

#: Deepest nesting accepted (a Flax TrainState is < 10 levels deep).
MAX_DEPTH = 64


class _Reader:
    def __init__(self, data: bytes, ext_hook: Callable[[int, bytes], Any]) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.ext_hook = ext_hook

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ValueError(f"msgpack data cut short at byte {self.pos} (needs {n} more)")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def num(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def ext(self, size: int) -> Any:
        code = self.num(">b")
        return self.ext_hook(code, bytes(self.take(size)))

    def seq(self, count: int, depth: int) -> list[Any]:
        return [self.value(depth + 1) for _ in range(count)]

    def mapping(self, count: int, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for _ in range(count):
            key = self.value(depth + 1)
            out[key if not isinstance(key, list) else tuple(key)] = self.value(depth + 1)
        return out

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"msgpack data nested deeper than {MAX_DEPTH} levels")
        b = self.num(">B")
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.mapping(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self.seq(b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return str(self.take(b & 0x1F), "utf-8")
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        sized = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}  # bin 8/16/32
        if b in sized:
            return bytes(self.take(self.num(sized[b])))
        ext_sized = {0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
        if b in ext_sized:
            return self.ext(self.num(ext_sized[b]))
        numbers = {
            0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
            0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
        }  # fmt: skip
        if b in numbers:
            return self.num(numbers[b])
        fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
        if b in fixext:
            return self.ext(fixext[b])
        strings = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
        if b in strings:
            return str(self.take(self.num(strings[b])), "utf-8")
        if b in (0xDC, 0xDD):
            return self.seq(self.num(">H" if b == 0xDC else ">I"), depth)
        if b in (0xDE, 0xDF):
            return self.mapping(self.num(">H" if b == 0xDE else ">I"), depth)
        raise ValueError(f"byte 0x{b:02x} at {self.pos - 1} is not a msgpack type")


def unpack(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    """Decode one msgpack value that fills ``data`` exactly.

    Args:
        data: the encoded bytes.
        ext_hook: ``(code, payload) -> value`` for ext types.

    Raises:
        ValueError: malformed, truncated or trailing data.
    """
    reader = _Reader(data, ext_hook)
    value = reader.value()
    if reader.pos != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.pos} bytes after the msgpack value")
    return value
