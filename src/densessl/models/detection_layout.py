"""A ViT backbone's weights in the key layouts of detection codebases (``export --to``).

Neither codebase is imported; the key names and shapes were read from their code:

``detectron2`` (facebookresearch/detectron2, ``detectron2/modeling/backbone/vit.py``
``ViT`` inside ``SimpleFeaturePyramid`` as ``backbone.net``, the ViTDet configs
``projects/ViTDet/configs/common/coco_loader_lsj.py`` / ``COCO/mask_rcnn_vitdet_b_100ep.py``)
    ``backbone.net.patch_embed.proj.{weight,bias}``, ``backbone.net.pos_embed``
    ``[1, 1 + (pretrain_img_size / p)^2, D]`` (with ``pretrain_use_cls_token=True``, the
    default: slot 0 is dropped by ``get_abs_pos``), and per block ``i``
    ``backbone.net.blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,
    bias}``. No CLS token, no final norm (ViTDet does not use them); the relative position
    tables ``rel_pos_h/w`` are not in a pre-trained ViT and start at zero, as for MAE weights.
    Saved as ``{"model": state_dict}`` (what ``DetectionCheckpointer`` reads from a ``.pth``).

``mmdet`` (alinlab/SelfPatch @81aef14 ``detection/backbone/vit_SelfPatch.py``
``SelfPatch_ViT``; QingSuML/FLSL @acb5d6f ``detection/backbone/vitdeit.py``, the same
layout) inside mmdet 2.x ``MaskRCNN`` as ``backbone``
    ``backbone.patch_embed.proj.{weight,bias}``, ``backbone.pos_embed``
    ``[1, (img_size / p)^2, D]`` (no CLS slot: these backbones drop the token) and
    ``backbone.blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,
    bias}``; the deconv pyramid ``backbone.fpn1-4`` and the detector's neck and heads start
    from their own init. Saved as ``{"state_dict": ..., "meta": ...}`` for mmcv's
    ``load_checkpoint`` via ``load_from=`` (strict=False: it lists the neck and heads as
    missing, which is expected).

Both ViTs are plain pre-norm blocks with a bias on qkv and LayerNorm eps 1e-6 (set in the
configs): backbones with layer scale, registers or rotary embeddings (DINOv2 / DINOv3
families) have no place there and are refused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densessl.models.vit import ViTBackbone

__all__ = ["DETECTION_TARGETS", "block_keys", "detection_state_dict"]

#: ``export --to`` targets and the prefix of their backbone keys.
DETECTION_TARGETS = {"detectron2": "backbone.net.", "mmdet": "backbone."}

_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def block_keys(index: int) -> list[str]:
    """The weight names of block ``index`` (same in timm, detectron2 and the mmdet ViTs)."""
    return [f"blocks.{index}.{part}.{kind}" for part in _BLOCK_PARTS for kind in ("weight", "bias")]


def _check(backbone: ViTBackbone, to: str) -> None:
    if to not in DETECTION_TARGETS:
        raise ValueError(
            f"unknown detection target {to!r}; choose one of {list(DETECTION_TARGETS)}"
        )
    state = backbone.model.state_dict()
    extra = [k for k in state if ".ls1." in k or ".ls2." in k or k.startswith("reg_token")]
    if backbone.uses_rope or backbone.num_registers or extra:
        raise ValueError(
            f"{to}'s ViT has no layer scale, registers or rotary embeddings; this "
            f"{backbone.config.family} backbone cannot be expressed in its layout"
        )
    if "blocks.0.attn.qkv.bias" not in state:
        raise ValueError(f"{to}'s ViT has a bias on qkv; this backbone has none")


def detection_state_dict(backbone: ViTBackbone, to: str) -> dict[str, Tensor]:
    """The backbone's weights under ``to``'s key names (module docstring), float32, on CPU.

    Raises:
        ValueError: unknown ``to`` or a backbone the target's ViT cannot hold.
    """
    _check(backbone, to)
    state = {k: v.detach().float().cpu().clone() for k, v in backbone.model.state_dict().items()}
    prefix = DETECTION_TARGETS[to]
    out = {
        f"{prefix}patch_embed.proj.{k}": state[f"patch_embed.proj.{k}"] for k in ("weight", "bias")
    }
    pos = state["pos_embed"]  # [1, prefix + N, D] or [1, N, D] (timm's no_embed_class / no CLS)
    n = backbone.grid_size(backbone.config.img_size, backbone.config.img_size)
    patches = pos[:, -n[0] * n[1] :]
    if to == "detectron2":
        cls = pos[:, :1] if pos.shape[1] == n[0] * n[1] + 1 else torch.zeros_like(pos[:, :1])
        out[f"{prefix}pos_embed"] = torch.cat([cls, patches], dim=1)
    else:
        out[f"{prefix}pos_embed"] = patches.clone()
    for index in range(len(backbone.model.blocks)):
        for key in block_keys(index):
            out[prefix + key] = state[key]
    return out
