"""NeCo's reference queue (the DINOv2 configs): parity with the official code, the shared
counter and its fix, keyed pushes and draws, the method with the queue, and the ``dinov2``
preset post-training from an official-layout DINOv2-R file.

Pinned values come from the official code, vpariza/NeCo @393216026b4d045e2e0b803f70a7d89d9a58937e
(``src/neco.py``: ``NeCo.update_queue`` then ``NeCo.knn_loss`` with ``is_queue_usable=True``,
one GPU, as ``shared_step`` runs them; ``src/neco_transforms.py`` ``calculate_bboxes`` for its
boxes; sorting by PyPI ``diffsort==0.2.0``), run on CPU (torch 2.14.1) from a scratch folder
on the inputs of ``neco_inputs.py`` (offsets shifted by the step), with
``torch.manual_seed(step)`` before each step's queue update; its code is not part of this
repository (script: ``/work/scratch_30b/official_queue.py``, outside it).
"""

from __future__ import annotations

import sys

import pytest
import torch
from neco_inputs import BOXES, GLOBAL, LOCAL, PATCH, B, D, grids, rows

from densessl.errors import ConfigError
from densessl.methods.base import StepInfo
from densessl.methods.neco.loss import NeCoLoss
from densessl.methods.neco.queue import ReferenceQueue
from densessl.models.loading import load_backbone
from densessl.train.trainer import Trainer, read_metrics
from helpers import CPU, TESTS, build_method, run_config, scenes, view_batch

sys.path.insert(0, str(TESTS / "models"))
from official_layouts import dinov2_keys, seeded_state

#: Official values per (RoI grid o, queue length) and step: the shared ``entries_in_queue``
#: after the step's two pushes, the loss, Σ|∂L/∂student| of the global and the local rows,
#: Σ|queue[c]| and its non-zero rows per crop.
PINNED = {
    (3, 48): [
        (40, 3.632390260696411, 1.8557255268096924, 1.5199686288833618, (82.91961, 81.87095), 20),
        (48, 4.433169841766357, 3.7462966442108154, 2.9005370140075684, (166.7815, 160.5524), 40),
        (48, 4.537552833557129, 3.5837643146514893, 6.078418731689453, (198.7043, 194.2965), 48),
    ],
    (7, 128): [
        (40, 4.909793853759766, 0.6360059380531311, 0.6149961948394775, (82.91961, 81.87095), 20),
        (80, 5.25356912612915, 0.7735267877578735, 0.6779053211212158, (166.7815, 160.5524), 40),
        (120, 5.036052703857422, 0.671657145023346, 0.8067983388900757, (248.4810, 241.9016), 60),
        (128, 5.37009859085083, 0.8378279209136963, 0.6603495478630066, (332.7973, 322.5303), 80),
    ],
}  # fmt: skip
#: ∂L/∂(first local row) at the last step.
PINNED_LC_ROW = {
    (3, 48): [0.08132867515087128, -0.19875016808509827, -0.17878001928329468,
              -0.1158158928155899, -0.2620607614517212, -0.17620958387851715],
    (7, 128): [-0.0041877799667418, 0.0003113658167421818, 0.006417365744709969,
               0.008466859348118305, 0.004064121283590794, -0.0012288494035601616],
}  # fmt: skip


@pytest.mark.parametrize(("size", "length"), list(PINNED))
def test_queue_and_loss_match_official_code(size, length, single_thread):
    """Steps until the queue is full: the official shared counter, the FIFO's rows, and the
    loss and gradients with references drawn from it (zero rows included early on)."""
    g, l = GLOBAL // PATCH, LOCAL // PATCH
    queue, criterion = ReferenceQueue(2, length, D, rows_per_image=10), NeCoLoss(size)
    for step, (entries, loss_value, gc_abs, lc_abs, queue_abs, filled) in enumerate(
        PINNED[(size, length)]
    ):
        teacher = grids(rows(2 * B * g * g, 0.1 + step), 2, g)
        student_g = rows(2 * B * g * g, 0.7 + step).requires_grad_()
        student_l = rows(2 * B * l * l, 1.9 + step).requires_grad_()
        student = grids(student_g, 2, g) + grids(student_l, 2, l)
        torch.manual_seed(step)  # the official randperm calls, in the official order
        for target in range(2):
            queue.push(target, teacher[target])
        loss = criterion(teacher, student, BOXES, queue=queue)
        loss.backward()
        assert int(queue.entries) == entries
        assert queue.count.tolist() == [filled, filled]
        assert ((queue.embeddings.abs().sum(-1) > 0).sum(-1)).tolist() == [filled, filled]
        sums = queue.embeddings.abs().sum(dim=(1, 2)).tolist()
        assert sums == pytest.approx(list(queue_abs), rel=1e-6)
        assert loss.item() == pytest.approx(loss_value, abs=1e-6)
        assert student_g.grad.abs().sum().item() == pytest.approx(gc_abs, rel=1e-5)
        assert student_l.grad.abs().sum().item() == pytest.approx(lc_abs, rel=1e-5)
    assert torch.allclose(student_l.grad[0], torch.tensor(PINNED_LC_ROW[(size, length)]), atol=1e-7)


KEYS = torch.tensor([5, 11])


def _push_step(queue: ReferenceQueue, seed: int) -> None:
    """One step's pushes: 2 crops x 20 rows (batch 2, 4x4 grids, 10 rows per image)."""
    gen = torch.Generator().manual_seed(seed)
    for target in range(2):
        queue.push(target, torch.rand(2, 4, 4, 4, generator=gen) + 0.1, KEYS + seed)


def test_official_counter_draws_zero_rows_until_full_and_filled_does_not():
    official = ReferenceQueue(2, 64, 4, rows_per_image=10, draw="official")
    fixed = ReferenceQueue(2, 64, 4, rows_per_image=10, draw="filled")
    _push_step(official, 0)
    _push_step(fixed, 0)
    assert torch.equal(official.embeddings, fixed.embeddings)  # pushes do not depend on it
    assert int(official.entries) == 40 and official.count.tolist() == [20, 20]
    torch.manual_seed(0)
    drawn = official.draw(0, 2, 9)
    assert drawn.shape == (2, 9, 4)
    zero = (drawn.abs().sum(-1) == 0).float().mean().item()
    assert 0.2 < zero < 0.8  # indices 20..39 of [0, 40) are rows no push reached
    for keys in (None, KEYS):
        rows_ = fixed.draw(0, 2, 9, keys).reshape(-1, 4)
        assert (rows_.abs().sum(-1) > 0).all()
        assert torch.unique(rows_, dim=0).shape[0] == 18  # distinct: the queue holds 20 >= 18
    # Full (64 rows each after 4 steps): both draw distinct rows of the whole queue.
    for seed in (1, 2, 3):
        _push_step(official, seed)
    assert int(official.entries) == 64 and official.count.tolist() == [64, 64]
    full = official.draw(0, 2, 9, KEYS).reshape(-1, 4)
    assert (full.abs().sum(-1) > 0).all() and torch.unique(full, dim=0).shape[0] == 18


def test_keyed_push_and_draw_follow_the_images_not_their_order():
    """Keyed choices are a pure function of the batch's keys: reordering the batch (as a
    split over processes does) pushes the same rows and hands each image the same
    references; the FIFO keeps the newest rows in front and drops the oldest."""
    gen = torch.Generator().manual_seed(3)
    grids = [torch.rand(3, 4, 4, 4, generator=gen) for _ in range(2)]
    keys = torch.randint(2**62, (3,), generator=gen)
    order = torch.tensor([2, 0, 1])
    queues = [ReferenceQueue(1, 64, 4, rows_per_image=10) for _ in range(2)]
    for grid in grids:
        queues[0].push(0, grid, keys)
        queues[1].push(0, grid[order], keys[order])
    assert torch.equal(queues[0].embeddings, queues[1].embeddings)
    pool = [g.permute(0, 2, 3, 1).reshape(-1, 4) for g in grids]
    newest, oldest = queues[0].embeddings[0, :30], queues[0].embeddings[0, 30:60]
    assert (newest[:, None] == pool[1][None]).all(-1).any(-1).all()  # second push in front
    assert (oldest[:, None] == pool[0][None]).all(-1).any(-1).all()
    assert torch.unique(newest, dim=0).shape[0] == 30  # 30 distinct rows of 48
    refs = queues[0].draw(0, 3, 9, keys, salt=2)
    assert torch.equal(queues[1].draw(0, 3, 9, keys[order], salt=2), refs[order])
    assert not torch.equal(queues[0].draw(0, 3, 9, keys, salt=3), refs)
    assert queues[0].count.tolist() == [60]
    newest, oldest = newest.clone(), oldest.clone()
    queues[0].push(0, grids[0], keys)  # 90 rows pushed into 64: the oldest 26 fall off
    assert queues[0].count.tolist() == [64] and int(queues[0].entries) == 64
    assert torch.equal(queues[0].embeddings[0, 30:60], newest)
    assert torch.equal(queues[0].embeddings[0, 60:], oldest[:4])


# ---------------------------------------------------------------- the method
SMALL = [*scenes(16, 4), *CPU, "neco.queue_length=64"]


def test_method_queue_is_state_and_options_are_checked(single_thread):
    method, cfg = build_method("neco", *SMALL, preset="smoke")
    assert method.queue is not None and "queue.embeddings" in method.state_dict()
    assert method.queue.embeddings.shape == (2, 64, 16)
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 96, 96, generator=gen) * 255).to(torch.uint8)
    batch = view_batch(cfg, [image] * 4, 0)
    batch["key"] = torch.randint(2**62, (4,), generator=gen)
    out = method.loss(batch, StepInfo(step=0, total_steps=3, steps_per_epoch=3))
    assert out["queue_fill"].item() == pytest.approx(40 / 64)
    assert torch.isfinite(out["loss"])
    none, _ = build_method("neco", *SMALL, "neco.queue_length=0", preset="smoke")
    assert none.queue is None and "queue_fill" not in none.loss(batch, StepInfo(0, 3, 3))
    for override, key in [
        ("neco.queue_draw=fifo", "queue_draw"),
        ("neco.queue_length=-1", "queue_length"),
        ("neco.queue_rows_per_image=0", "queue_rows_per_image"),
    ]:
        with pytest.raises(ConfigError, match=key):
            build_method("neco", *SMALL, override, preset="smoke")


def test_dinov2_preset_follows_neco_dinov2r():
    cfg = run_config("neco", preset="dinov2")
    b, v, p = cfg.backbone, cfg.views, cfg.params
    assert (b.arch, b.family, b.num_registers, b.patch_size, b.img_size) == (
        "vit_small", "dinov2", 4, 14, 518
    )  # fmt: skip
    assert b.grad_checkpointing and b.drop_path_rate == 0.1
    assert (v.num_global, v.global_size, v.num_local, v.local_size) == (2, 518, 4, 98)
    assert (cfg.data.batch_size, cfg.optim.epochs, cfg.optim.lr, p.head_lr_scale) == (
        64, 25, 1e-5, 10.0
    )  # fmt: skip
    assert (p.queue_length, p.queue_rows_per_image, p.queue_draw) == (8192, 10, "official")
    assert (p.roi_align_size, p.student_steepness, p.similarity) == (7, 100.0, "cosine")
    assert run_config("neco", preset="paper").params.queue_length == 0  # neco_dino.yml: none


def test_dinov2_preset_post_trains_from_an_official_dinov2r_file(tmp_path, single_thread):
    """The ``dinov2`` preset at test size (2 blocks of 64-d, 56 px globals: the official
    4x4 position grid) from an official-layout DINOv2-R file: both backbones start from it,
    registers included, and 3 steps with the queue (and gradient checkpointing) train."""
    official = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(seeded_state(dinov2_keys(4)), official)
    cfg = run_config(
        "neco", *scenes(16, 4), *CPU, "backbone.depth=2", "backbone.embed_dim=64",
        "backbone.num_heads=2", "backbone.img_size=56", "views.global_size=56",
        "views.local_size=28", "views.num_local=2", "neco.projection_dim=16",
        "neco.hidden_dim=32", "neco.roi_align_size=3", "neco.queue_length=64",
        "optim.steps=3", "optim.lr=1e-3", "train.log_every=1", preset="dinov2",
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "post", init=str(official))
    reference = load_backbone(official, num_heads=2).model.state_dict()
    for network in (trainer.method.student, trainer.method.teacher):
        backbone = network.backbone
        assert backbone.num_registers == 4 and backbone.patch_size == 14
        for key, value in backbone.model.state_dict().items():
            assert torch.equal(value, reference[key]), key
    start = trainer.method.student.backbone.model.blocks[0].attn.qkv.weight.detach().clone()
    trainer.fit()
    records = read_metrics(tmp_path / "post")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert [r["queue_fill"] for r in records] == [40 / 64, 1.0, 1.0]
    state = torch.load(tmp_path / "post/checkpoints/last.pt", weights_only=True)["model"]
    assert state["queue.count"].tolist() == [64, 64]
    moved = state["student.backbone.model.blocks.0.attn.qkv.weight"] - start
    assert moved.abs().max() > 1e-4
