"""Look at dense features: one PNG panel per image (``densessl viz``, :func:`visualize`).

Every panel shows, left to right and then on further rows:

* **input**: the image as the backbone saw it (shorter side ``size`` px, aspect ratio kept,
  both sides rounded to multiples of the patch size);
* **PCA**: the first three principal components of the patch features as RGB, fitted
  *jointly* over all images of the call, so equal colours mean equal features across
  pictures. With ``mask_background=True`` the first component separates foreground from
  background first (border patches decide its sign; background is black), as is usually
  done for DINO features (:mod:`densessl.viz.pca`);
* **k-means**: ``clusters`` joint k-means clusters of the (L2-normalised) patches over the
  image; colours are consistent across panels;
* **attention**: the last block's CLS-token attention to the patches, averaged over heads
  and then per head (backbones without a CLS token, e.g. SelfPatch/FLSL layouts or timm
  models, have no such tiles).

``--backbone`` takes everything ``densessl eval`` takes (a run directory, a densessl or official
DINO checkpoint, an export folder, ``timm:NAME`` with ``weights``, ``random:ARCH``), loaded
by :func:`densessl.evaluation.features.build_extractor`; a built
:class:`~densessl.models.vit.ViTBackbone` works too (and stays on its device).

:func:`feature_grid` draws the same columns for a batch of image tensors into one PNG, a row
per image, for pictures logged while training (``pictures/step_XXXX.png``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor, nn

from densessl.data.folder import list_image_files
from densessl.errors import ConfigError
from densessl.evaluation.preprocess import normalize, resize_image
from densessl.io.decode import ImageDecodeError, display_path, load_rgb
from densessl.io.paths import user_path
from densessl.ops.devices import parse_device
from densessl.viz.draw import compose_panel, heat_overlay, image_to_pil, label_overlay, map_to_pil
from densessl.viz.pca import cluster_maps, foreground_mask, pca_rgb

__all__ = ["collect_images", "feature_grid", "target_size", "visualize"]

_SOFTWARE = "densessl viz"  # the PNG text chunk that marks a picture as densessl's


@dataclass
class _Seen:
    """What the backbone produced for one image."""

    image: Tensor  # [3, H, W] float in [0, 1], the resized input
    patches: Tensor  # [h, w, D] float32, CPU
    attention: Tensor | None  # [heads, h, w] float32, CPU


def collect_images(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    max_images: int | None = None,
) -> list[Path]:
    """Image files from a folder (searched recursively, sorted), files, or a mix of both.

    Raises:
        FileNotFoundError: a path does not exist, or no image file was found (the message
            names the paths and the extensions looked for).
    """
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise FileNotFoundError("no images given: pass a folder or image files")
    found: list[Path] = []
    for item in items:
        path = user_path(item)
        if path.is_dir():
            found.extend(Path(f) for f in list_image_files(path)[0])
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"image path not found: {display_path(path)}")
    if not found:
        from densessl.io.decode import IMAGE_EXTENSIONS

        names = ", ".join(display_path(Path(i)) for i in items)
        raise FileNotFoundError(
            f"no image files in {names} (looked for extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return found[:max_images] if max_images is not None else found


def target_size(height: int, width: int, size: int, patch_size: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``size`` and the aspect ratio kept, both sides rounded
    to the nearest multiple of ``patch_size`` (at least one patch)."""
    scale = size / min(height, width)
    return tuple(  # type: ignore[return-value]
        max(patch_size, round(side * scale / patch_size) * patch_size) for side in (height, width)
    )


def _backbone_of(model: nn.Module) -> nn.Module:
    """The :class:`ViTBackbone` inside an evaluation extractor, or the module itself."""
    from densessl.evaluation.features import PatchFeatureExtractor

    return model.model if isinstance(model, PatchFeatureExtractor) else model


def _patch_size(model: nn.Module) -> int:
    size = getattr(model, "patch_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no patch_size; pass a ViTBackbone")
    return int(size)


@torch.no_grad()
def _look(model: nn.Module, image: Tensor, attention: bool) -> _Seen:
    """Patch features (and CLS attention when available and asked) of one ``[3, H, W]`` image."""
    from densessl.models.vit import ViTBackbone

    inner = _backbone_of(model)
    batch = normalize(image).unsqueeze(0)
    if isinstance(inner, ViTBackbone):
        if attention and inner.has_cls_token:
            _, patches, attn = inner.tokens_and_attention(batch)
            h, w = patches.shape[1:3]
            return _Seen(image, patches[0].float().cpu(), attn[0].reshape(-1, h, w).cpu())
        return _Seen(image, inner.tokens(batch)[1][0].float().cpu(), None)
    return _Seen(image, model(batch)[0].float().cpu(), None)


def _tiles(
    seen: _Seen, rgb: Tensor, labels: Tensor, clusters: int
) -> list[tuple[str, Image.Image]]:
    base = image_to_pil(seen.image)
    tiles = [
        ("input", base),
        ("PCA (RGB)", map_to_pil(rgb, base.size)),
        (f"k-means k={clusters}", label_overlay(base, labels)),
    ]
    if seen.attention is not None:
        tiles.append(("CLS attn (mean)", heat_overlay(base, seen.attention.mean(0))))
        tiles += [(f"head {i}", heat_overlay(base, a)) for i, a in enumerate(seen.attention)]
    return tiles


def _is_own_png(path: Path) -> bool:
    """A PNG that :func:`_save_png` wrote (its ``Software`` text chunk says so)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == _SOFTWARE
    except Exception:  # not an image, unreadable, a folder: PIL raises many types
        return False


def _check_targets(out: Path, paths: Sequence[Path]) -> None:
    """Refuse to overwrite anything but an earlier densessl picture (before writing any)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"viz --out {out} is a file; give a folder for the panels")
    foreign = [p for p in paths if p.exists() and not _is_own_png(p)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if foreign[1:] else ""
        raise ConfigError(
            f"viz --out: {foreign[0]}{more} exists and was not written by densessl; densessl "
            "never overwrites files it did not write. Give another --out"
        )


def _save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename), marked as
    densessl's in its ``Software`` text chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    info = PngInfo()
    info.add_text("Software", _SOFTWARE)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _joint_maps(
    seen: list[_Seen], clusters: int, mask_background: bool, threshold: float, seed: int
) -> tuple[list[Tensor], list[Tensor]]:
    feats = [s.patches for s in seen]
    masks = foreground_mask(feats, threshold) if mask_background else None
    total = sum(f.shape[0] * f.shape[1] for f in feats)
    if not 1 <= clusters <= total:
        raise ValueError(f"clusters must be between 1 and the number of patches ({total})")
    return pca_rgb(feats, masks), cluster_maps(feats, clusters, seed=seed)


def _load_model(
    backbone: str | os.PathLike[str] | nn.Module,
    which: str,
    arch: str | None,
    patch_size: int | None,
    weights: str | os.PathLike[str] | None,
    device: str | torch.device | None,
) -> nn.Module:
    if isinstance(backbone, nn.Module):
        return backbone
    from densessl.evaluation.features import build_extractor

    model = build_extractor(
        backbone, arch=arch, patch_size=patch_size, which=which, weights=weights
    )
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(parse_device(target, "--device"))


def visualize(
    backbone: str | os.PathLike[str] | nn.Module,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    clusters: int = 6,
    mask_background: bool = False,
    threshold: float = 0.0,
    attention: bool = True,
    max_images: int | None = 16,
    which: str = "teacher",
    arch: str | None = None,
    patch_size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write one feature panel PNG per image into ``out`` (see the module docstring).

    Args:
        backbone: run directory, checkpoint, export, ``timm:NAME``, ``random:ARCH`` (as for
            ``densessl eval``) or a built ``ViTBackbone`` / evaluation extractor.
        images: a folder (recursive) or image files.
        out: output folder; panels are named ``NNN_<image stem>.png`` in input order. A file
            of that name that densessl did not write is refused (nothing is written then).
        size: shorter side of the image fed to the backbone, in pixels (DINO pictures use
            224-480 px; larger shows finer maps but costs quadratically more attention).
        clusters: k of the joint k-means (a few more than the number of object kinds).
        mask_background: black out the background found by the first PCA component before
            the RGB PCA (clearer colours on object-centric photos; meaningless on a random
            backbone).
        threshold: cut on the standardised first component for ``mask_background``.
        attention: draw the CLS attention maps (when the backbone has a CLS token).
        max_images: use at most this many images (the first ones, in sorted order).
        which / arch / patch_size / weights: passed to the loader, as in ``densessl eval``.
        device: where a loaded backbone runs (default: CUDA if available, else CPU).
        seed: k-means seed.
        progress: show a progress bar.

    Returns:
        The written PNG paths, in input order.

    Raises:
        FileNotFoundError: missing paths or no image files.
        CheckpointError / ConfigError: the backbone cannot be loaded; ConfigError: ``out``
            is a file or holds a file of a panel's name that densessl did not write.
        ImageDecodeError: an image file given explicitly cannot be decoded (undecodable files
            found in a folder are skipped with a message).
        ValueError: bad ``size`` / ``clusters``.
    """
    if size < 1 or clusters < 1 or not -1e6 < threshold < 1e6:  # NaN and inf too
        raise ValueError(
            "size and clusters must be positive and threshold a finite number, got "
            f"size={size}, clusters={clusters}, threshold={threshold}"
        )
    files = collect_images(images, max_images)
    model = _load_model(backbone, which, arch, patch_size, weights, device)
    patch = _patch_size(model)
    given = [images] if isinstance(images, (str, os.PathLike)) else images
    listed = {user_path(i) for i in given}  # named files: decode errors are errors

    from tqdm.auto import tqdm

    seen: list[_Seen] = []
    kept: list[Path] = []
    was_training = model.training
    model.eval()
    try:
        for path in tqdm(files, desc="features", disable=not progress, leave=False):
            try:
                pixels = load_rgb(path)
            except ImageDecodeError as err:
                if path in listed:
                    raise
                print(f"skipping {err}", file=sys.stderr)
                continue
            hw = target_size(pixels.shape[1], pixels.shape[2], size, patch)
            seen.append(_look(model, resize_image(pixels, hw), attention))
            kept.append(path)
    finally:
        model.train(was_training)
    if not seen:
        raise FileNotFoundError(f"none of the {len(files)} image files could be decoded")
    rgbs, labels = _joint_maps(seen, clusters, mask_background, threshold, seed)
    out = user_path(out)
    targets = [out / f"{i:03d}_{path.stem}.png" for i, path in enumerate(kept)]
    _check_targets(out, targets)
    written = []
    for target, s, rgb, lab in zip(targets, seen, rgbs, labels, strict=True):
        written.append(_save_png(compose_panel(_tiles(s, rgb, lab, clusters)), target))
    return written


def feature_grid(
    backbone: nn.Module,
    images: Tensor,
    path: str | os.PathLike[str],
    *,
    clusters: int = 6,
    seed: int = 0,
) -> Path:
    """One PNG, a row per image: input, PCA, k-means and mean CLS attention (if any).

    Meant for pictures logged during training: call it with the teacher backbone and a
    fixed batch. The backbone's mode is restored afterwards and nothing is moved between
    devices except the images (which follow the backbone).

    Args:
        backbone: a :class:`~densessl.models.vit.ViTBackbone` (or evaluation extractor).
        images: ``[B, 3, H, W]`` uint8 or float in ``[0, 1]`` (not normalised), sides
            multiples of the patch size.
        path: the PNG to write (atomically).
        clusters: k of the joint k-means.
        seed: k-means seed.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    was_training = backbone.training
    backbone.eval()
    try:
        floats = resize_image(images, tuple(images.shape[-2:])).cpu()
        seen = [_look(backbone, image, attention=True) for image in floats]
    finally:
        backbone.train(was_training)
    rgbs, labels = _joint_maps(seen, clusters, False, 0.0, seed)
    tiles: list[tuple[str, Image.Image]] = []
    for s, rgb, lab in zip(seen, rgbs, labels, strict=True):
        row = _tiles(s, rgb, lab, clusters)
        tiles += row[:4]
    columns = 4 if seen[0].attention is not None else 3
    _check_targets(Path(path).parent, [Path(path)])
    return _save_png(compose_panel(tiles, columns), Path(path))
