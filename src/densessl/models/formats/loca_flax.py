"""LOCA releases (google-research/scenic @4a38d47, ``scenic/projects/loca``): Flax checkpoints,
read without JAX.

**File.** ``flax.training.checkpoints.save_checkpoint`` writes
``flax.serialization.to_bytes(state)``: one msgpack map of nested string-keyed maps whose
leaves are arrays as msgpack ext type 1 (payload: msgpack ``[shape, dtype name, C-order
bytes]``; ext 3 the same for numpy scalars; arrays above 2**30 bytes are split into
``{"__msgpack_chunked_array__": True, "shape", "chunks"}``). Decoded by
:mod:`.msgpack_reader`.

**Tree.** ``ViT4LOCA`` (``vit.py``): ``ToTokenSequence_0/{embedding/{kernel [p, p, 3, D],
bias}, posembed_input [1, h, w, D]}``, ``encoderblock_{i}/{LayerNorm_0,
MultiHeadDotProductAttention_0/{query,key,value}/{kernel [D, H, D/H], bias [H, D/H]},
.../out/{kernel [H, D/H, D], bias}, LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}``,
``encoder_norm``; then heads (``projection_head_for_clustering_prediction``,
``cross_attention_block``, ``final_norm``, ``position_predictor``) that are not backbone.
The trainer's ``TrainState`` stores ``params`` (student) and ``ema_params`` (teacher); the
model-zoo files hold ``teacher_weights`` (scenic issue #1106). The backbone is found by these
module names wherever it sits in the tree; the teacher (``teacher_weights``, else
``ema_params``) is used by default.

**Model.** tanh-approximate GELU (``nn.gelu``), LayerNorm eps 1e-6, no CLS token, the final
``encoder_norm``, and ``jax.image.resize(..., "bilinear")`` position resampling: the backbone
is built with ``act_layer="gelu_tanh"``, ``pos_interp="bilinear"``, ``cls_token=False``.
``num_heads`` is read from the query kernel, so ViT-S/B/L/H/16 (384/6, 768/12, 1024/16,
1280/16) all load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densessl.models.formats.common import Converted
from densessl.models.formats.msgpack_reader import unpack
from densessl.models.vit import ARCHS

__all__ = ["NAME", "is_flax_file", "looks_like", "read_flax", "to_timm"]

NAME = "loca"
#: Flax dtype names → torch dtypes.
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint32": torch.int64,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}
TEACHER_KEYS = ("teacher_weights", "ema_params", "teacher")
STUDENT_KEYS = ("student_weights", "params", "student")
TOP_KEYS = ("teacher_weights", "ema_params")


def is_flax_file(path: Path) -> bool:
    """A msgpack map (not a zip or pickle torch file) starts the file."""
    with open(path, "rb") as handle:
        head = handle.read(1)
    return bool(head) and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def _array(payload: bytes) -> Tensor:
    shape, dtype, buffer = unpack(payload, _ext_hook)
    name = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
    if name == "uint32":
        import numpy as np

        return torch.from_numpy(np.frombuffer(buffer, dtype=np.uint32).astype("int64")).reshape(
            shape
        )
    if name not in DTYPES:
        raise ValueError(f"array of dtype {name!r} is not supported")
    flat = torch.frombuffer(bytearray(buffer), dtype=DTYPES[name]) if buffer else None
    if flat is None:
        return torch.zeros(shape, dtype=DTYPES[name])
    return flat.reshape([int(s) for s in shape]).clone()


def _ext_hook(code: int, payload: bytes) -> Any:
    if code in (1, 3):  # ndarray, numpy scalar
        return _array(payload)
    if code == 2:  # native complex
        real, imag = unpack(payload, _ext_hook)
        return complex(real, imag)
    raise ValueError(f"unknown msgpack ext type {code}")


def _unchunk(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if tree.get("__msgpack_chunked_array__"):
        chunks = tree["chunks"]
        parts = [chunks[str(i)] for i in range(len(chunks))]
        return torch.cat([p.reshape(-1) for p in parts]).reshape(list(tree["shape"]))
    return {k: _unchunk(v) for k, v in tree.items()}


def read_flax(path: Path) -> dict[str, Any]:
    """A Flax msgpack checkpoint as nested dicts of tensors.

    Raises:
        ValueError: not msgpack, or not a map at the top.
    """
    tree = _unchunk(unpack(Path(path).read_bytes(), _ext_hook))
    if not isinstance(tree, dict):
        raise ValueError(f"a Flax checkpoint is a msgpack map, found {type(tree).__name__}")
    return tree


def _find(tree: Any, key: str, depth: int = 0) -> Mapping[str, Any] | None:
    """The first mapping (depth-first, at most 6 levels down) holding ``key``."""
    if not isinstance(tree, Mapping) or depth > 6:
        return None
    if key in tree:
        return tree
    for value in tree.values():
        found = _find(value, key, depth + 1)
        if found is not None:
            return found
    return None


def looks_like(obj: Any) -> bool:
    """A Flax tree with LOCA's ``encoderblock_0``, or LOCA's top-level entries
    (``teacher_weights``: the zoo files; ``ema_params``: scenic's TrainState)."""
    if isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in TOP_KEYS):
        return True
    return _find(obj, "encoderblock_0") is not None


def _modules(tree: Any, depth: int = 2) -> list[str]:
    """Module paths of ``tree`` down to ``depth`` levels, for messages."""
    if not isinstance(tree, Mapping) or depth == 0:
        return []
    out = []
    for key, value in tree.items():
        inner = _modules(value, depth - 1)
        out.extend([f"{key}/{m}" for m in inner] if inner else [str(key)])
    return out


def _network(tree: Mapping[str, Any], which: str) -> Mapping[str, Any]:
    keys = TEACHER_KEYS if which == "teacher" else STUDENT_KEYS
    for key in keys:
        if isinstance(tree.get(key), Mapping):
            return tree[key]
    if any(isinstance(tree.get(k), Mapping) for k in (*TEACHER_KEYS, *STUDENT_KEYS)):
        present = [k for k in (*TEACHER_KEYS, *STUDENT_KEYS) if isinstance(tree.get(k), Mapping)]
        raise ValueError(
            f"looks like a LOCA Flax checkpoint but has no {which} weights (looked for "
            f"{list(keys)}, found {present}); use --which "
            f"{'student' if which == 'teacher' else 'teacher'}"
        )
    return tree


def _leaf(node: Mapping[str, Any] | None, key: str, where: str) -> Tensor:
    value = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(value, Tensor):
        raise ValueError(f"looks like a LOCA Flax checkpoint but {where}/{key} is missing")
    return value.float()


def _dense(node: Any, where: str) -> tuple[Tensor, Tensor]:
    return _leaf(node, "kernel", where).T.contiguous(), _leaf(node, "bias", where)


def _norm(node: Any, where: str) -> tuple[Tensor, Tensor]:
    return _leaf(node, "scale", where), _leaf(node, "bias", where)


def _block(block: Mapping[str, Any], i: int, out: dict[str, Tensor]) -> int:
    """Convert ``encoderblock_{i}`` into ``out``; returns its number of heads."""
    where = f"encoderblock_{i}"
    attn = block.get("MultiHeadDotProductAttention_0")
    q = _leaf(attn.get("query") if isinstance(attn, Mapping) else None, "kernel", where)
    width, heads = q.shape[0], q.shape[1]
    parts = [
        _leaf(attn.get(n) if isinstance(attn, Mapping) else None, "kernel", f"{where}/{n}")
        for n in ("query", "key", "value")
    ]
    biases = [_leaf(attn[n], "bias", f"{where}/{n}") for n in ("query", "key", "value")]
    p = f"blocks.{i}."
    out[p + "attn.qkv.weight"] = torch.cat([k.reshape(width, width).T for k in parts])
    out[p + "attn.qkv.bias"] = torch.cat([b.reshape(width) for b in biases])
    proj = _leaf(attn.get("out"), "kernel", f"{where}/out")
    out[p + "attn.proj.weight"] = proj.reshape(width, width).T.contiguous()
    out[p + "attn.proj.bias"] = _leaf(attn["out"], "bias", f"{where}/out")
    out[p + "norm1.weight"], out[p + "norm1.bias"] = _norm(block.get("LayerNorm_0"), where)
    out[p + "norm2.weight"], out[p + "norm2.bias"] = _norm(block.get("LayerNorm_1"), where)
    mlp = block.get("MlpBlock_0")
    mlp = mlp if isinstance(mlp, Mapping) else {}
    out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = _dense(mlp.get("Dense_0"), where)
    out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = _dense(mlp.get("Dense_1"), where)
    return int(heads)


def to_timm(obj: Any, which: str = "teacher") -> Converted:
    """LOCA's ViT encoder (``which`` network) in timm keys, with its config fields.

    Raises:
        ValueError: not a LOCA tree, or a module / parameter of the encoder is missing.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    if not isinstance(obj, Mapping) or not looks_like(obj):
        raise ValueError("not a LOCA Flax checkpoint: no 'encoderblock_0' module in the tree")
    net = _network(obj, which)
    encoder = _find(net, "encoderblock_0")
    if encoder is None:  # e.g. a variant with other module names
        shown = _modules(net)
        raise ValueError(
            "looks like a LOCA Flax checkpoint but its encoder has no 'encoderblock_0' "
            f"(scenic's ViT4LOCA names); found modules {shown[:12]}"
            + (f" (+{len(shown) - 12} more)" if len(shown) > 12 else "")
        )
    embed = _find(net, "embedding")
    kernel = _leaf(embed.get("embedding") if embed else None, "kernel", "embedding")
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
        raise ValueError(f"LOCA embedding/kernel should be [p, p, 3, D], is {list(kernel.shape)}")
    out: dict[str, Tensor] = {
        "patch_embed.proj.weight": kernel.permute(3, 2, 0, 1).contiguous(),
        "patch_embed.proj.bias": _leaf(embed["embedding"], "bias", "embedding"),
    }
    holder = _find(net, "posembed_input")
    pos = holder.get("posembed_input") if holder else None
    if isinstance(pos, Mapping):  # scenic's AddPositionEmbs: posembed_input/pos_embedding
        pos = pos.get("pos_embedding")
    square = isinstance(pos, Tensor) and (
        pos.ndim == 3 or (pos.ndim == 4 and pos.shape[1] == pos.shape[2])
    )
    if not square:
        raise ValueError(
            "looks like a LOCA Flax checkpoint but posembed_input [1, h, h, D] is missing"
        )
    grid = pos.shape[1] if pos.ndim == 4 else round(pos.shape[1] ** 0.5)
    out["pos_embed"] = pos.float().reshape(1, -1, pos.shape[-1])
    depth = 0
    while f"encoderblock_{depth}" in encoder:
        heads = _block(encoder[f"encoderblock_{depth}"], depth, out)
        depth += 1
    norm = _find(net, "encoder_norm")
    final = norm.get("encoder_norm") if norm else None
    out["norm.weight"], out["norm.bias"] = _norm(final, "encoder_norm")
    width, patch = kernel.shape[3], kernel.shape[0]
    standard = {dim: arch for arch, (dim, _, _) in ARCHS.items()}
    fields = {
        "arch": standard.get(int(width), "vit_base"),
        "patch_size": int(patch),
        "img_size": int(grid * patch),
        "embed_dim": int(width),
        "depth": depth,
        "num_heads": heads,
        "cls_token": False,
        "final_norm": True,
        "act_layer": "gelu_tanh",
        "pos_interp": "bilinear",
    }
    return Converted(NAME, out, fields)
