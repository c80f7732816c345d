"""Checkpoint formats → timm ViT weights: backbone families and released dense-SSL methods.

One module per format, each with ``looks_like(obj)`` (detection on a loaded file) and
``to_timm(obj, which)`` → :class:`~densessl.models.formats.common.Converted` (timm-layout
weights plus the ``BackboneConfig`` fields the format fixes):

* :mod:`.dinov2` (facebookresearch/dinov2 ± registers), :mod:`.dinov3` (facebookresearch/dinov3,
  RoPE), sharing :mod:`.network` (teacher/student, prefixes, FSDP chunks);
* :mod:`.selfpatch` (alinlab/SelfPatch, CLS-free ViT-S/16, class-attention head dropped),
* :mod:`.leopart` (MkuuWaUjinga/leopart, Lightning ``.ckpt``, ``model.``/``teacher.``),
* :mod:`.loca_flax` (google-research/scenic ``projects/loca``, Flax msgpack, read without JAX),
* :mod:`.flsl` (QingSuML/FLSL, DINO-style dicts of a CLS-free ViT),
* :mod:`.neco` (vpariza/NeCo, DINO- or DINOv2-style networks with NeCo's projection head;
  bare released files or Lightning ``.ckpt``).

:mod:`.detect` reads a file (torch or Flax), detects its format (or takes ``--format NAME``,
:mod:`.choice`) and converts it; official DINO files (and timm-layout files of any family) and
densessl checkpoints keep their own paths (:mod:`densessl.models.dino_compat`,
:mod:`densessl.io.checkpoint`).
"""
