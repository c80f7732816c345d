"""NeCo: loss and gradient parity with the official code, reference draw, method mechanics
(two learning rates, the official-code options), presets and a tiny run on scenes.

Pinned values come from the official code, vpariza/NeCo @3932160 (``src/neco.py``
``NeCo.knn_loss`` / ``compute_knn_perm_mat`` / ``compute_knn_subloss``, without the queue as
in ``experiments/configs/models/small/neco_dino.yml``; ``src/neco_transforms.py``
``NeCoTransforms.calculate_bboxes`` for its crop-frame boxes; sorting by PyPI
``diffsort==0.2.0``), run once on CPU (torch 2.14.1, torchvision 0.29.1) from a scratch folder
on the inputs of ``tests/methods/neco_inputs.py``, with ``torch.manual_seed(0)`` before the
loss (its reference shuffles); its code is not part of this repository.
"""

from __future__ import annotations

import pytest
import torch
from neco_inputs import BOXES, GLOBAL, LOCAL, PATCH, B, grids, rows

from densessl.errors import ConfigError
from densessl.methods.base import StepInfo
from densessl.methods.neco.loss import NeCoLoss, ordering_cross_entropy, soft_ranks
from densessl.methods.neco.references import shuffled_references
from densessl.methods.neco.sorting import DiffSort
from densessl.train.trainer import Trainer, read_metrics
from helpers import CPU, VIT_2X64, build_method, run_config, scenes, view_batch

SMALL = [*scenes(64, 4), *CPU, *VIT_2X64, "neco.projection_dim=16", "neco.hidden_dim=32"]
INFO = StepInfo(step=0, total_steps=10, steps_per_epoch=5)

# ------------------------------- the official code's outputs on tests/methods/neco_inputs.py
#: Official ``knn_loss`` (cosine, bitonic, steepness 100/100) for roi_align_kernel_size o:
#: loss, Σ|∂L/∂student| over the global and the local rows, and the first rows of each.
PINNED = {
    3: {
        "loss": 4.670998573303223,
        "grad_gc_abs": 3.9040119647979736,
        "grad_lc_abs": 2.566457509994507,
        "grad_gc_rows": [
            [
                0.0016130002913996577,
                -0.0003842524893116206,
                -0.002644764259457588,
                -0.0018365585710853338,
                -0.0002932661445811391,
                0.00023592125216964632,
            ],
            [
                0.009191475808620453,
                -0.00019697983225341886,
                -0.010533181950449944,
                -0.008158103562891483,
                -0.002039174549281597,
                0.0004296499246265739,
            ],
        ],
        "grad_lc_rows": [
            [
                0.04406453296542168,
                0.06589368730783463,
                0.07686349749565125,
                0.06186424195766449,
                -0.0005254950374364853,
                -0.05213724076747894,
            ],
            [
                0.04269617795944214,
                0.050408296287059784,
                0.07187686860561371,
                0.06574127823114395,
                -0.01873711496591568,
                -0.06174830347299576,
            ],
        ],
    },
    7: {
        "loss": 6.269951820373535,
        "grad_gc_abs": 1.4127038717269897,
        "grad_lc_abs": 1.029497504234314,
        "grad_gc_rows": [
            [
                -0.0024407885503023863,
                -0.003782065585255623,
                -0.0054483371786773205,
                -0.0035914815962314606,
                -0.0008874780032783747,
                -0.0015840866835787892,
            ],
            [
                -0.003261695383116603,
                -0.004592020530253649,
                -0.008122237399220467,
                -0.004230489954352379,
                -5.367279300116934e-05,
                -0.002588491188362241,
            ],
        ],
        "grad_lc_rows": [
            [
                0.014720981009304523,
                0.022561894729733467,
                -0.002449227496981621,
                0.0008630919619463384,
                0.011550413444638252,
                -0.013126885518431664,
            ],
            [
                0.012060296721756458,
                0.01217443123459816,
                -0.006510394159704447,
                0.004332432523369789,
                -0.004315321333706379,
                0.0011875354684889317,
            ],
        ],
    },
}


@pytest.mark.parametrize("size", [3, 7])
def test_loss_and_gradients_match_official_code(size, single_thread):
    g, l = GLOBAL // PATCH, LOCAL // PATCH
    teacher = grids(rows(2 * B * g * g, 0.1), 2, g)
    student_g = rows(2 * B * g * g, 0.7).requires_grad_()
    student_l = rows(2 * B * l * l, 1.9).requires_grad_()
    student = grids(student_g, 2, g) + grids(student_l, 2, l)
    torch.manual_seed(0)  # the references: one torch.randperm per crop pair, as the code
    loss = NeCoLoss(size)(teacher, student, BOXES)
    loss.backward()
    pinned = PINNED[size]
    assert loss.item() == pytest.approx(pinned["loss"], abs=1e-6)
    assert student_g.grad.abs().sum().item() == pytest.approx(pinned["grad_gc_abs"], rel=1e-5)
    assert student_l.grad.abs().sum().item() == pytest.approx(pinned["grad_lc_abs"], rel=1e-5)
    assert torch.allclose(student_g.grad[:2], torch.tensor(pinned["grad_gc_rows"]), atol=1e-7)
    assert torch.allclose(student_l.grad[:2], torch.tensor(pinned["grad_lc_rows"]), atol=1e-7)


def test_pair_term_is_the_cross_entropy_over_ranks_per_reference():
    """One crop pair by hand: cosine similarities, sort, CE over the rank axis of P."""
    gen = torch.Generator().manual_seed(0)
    queries_t, queries_s, refs = (torch.randn(2, 8, 2, 2, generator=gen) for _ in range(3))
    sorter = DiffSort(4, steepness=100.0)
    p = soft_ranks(queries_s, refs, sorter, "cosine")
    q = soft_ranks(queries_t, refs, sorter, "cosine")
    assert p.shape == (2, 4, 4, 4)
    qs = torch.nn.functional.normalize(queries_s.flatten(2).transpose(1, 2), dim=-1)
    rs = torch.nn.functional.normalize(refs.flatten(2).transpose(1, 2), dim=-1)
    _, expected = sorter((qs @ rs.transpose(1, 2)).reshape(8, 4))
    assert torch.allclose(p, expected.reshape(2, 4, 4, 4))
    by_hand = -(q * p.log()).sum(dim=-1).mean()
    assert ordering_cross_entropy(q, p).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # Identical student and teacher sorts give the entropy of P, the minimum over p.
    assert ordering_cross_entropy(q, q) < ordering_cross_entropy(q, p)
    euclid = soft_ranks(queries_s, refs, sorter, "euclidean")
    assert euclid.shape == p.shape and not torch.allclose(euclid, p)


# ---------------------------------------------------------------- the reference draw
def test_keyed_references_are_a_joint_permutation_of_the_batch():
    gen = torch.Generator().manual_seed(1)
    aligned = torch.randn(5, 3, 2, 2, generator=gen)
    keys = torch.randint(2**62, (5,), generator=gen)
    refs = shuffled_references(aligned, keys, salt=3)
    rows = aligned.permute(0, 2, 3, 1).reshape(-1, 3)
    picked = refs.permute(0, 2, 3, 1).reshape(-1, 3)
    # Every patch of the batch is some image's reference exactly once.
    assert torch.equal(picked[torch.argsort(picked[:, 0])], rows[torch.argsort(rows[:, 0])])
    # A pure function of the keys: reordering the batch reorders the references with it
    # (so any split over processes draws the same), other salts draw other sets.
    order = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(shuffled_references(aligned[order], keys[order], salt=3), refs[order])
    assert not torch.equal(shuffled_references(aligned, keys, salt=4), refs)
    own = (picked.reshape(5, 4, 1, 3) == rows.reshape(1, 1, 20, 3)).all(-1).any(1)
    assert own.sum() > 5  # references come from many images, not only each image's own
    with pytest.raises(ValueError, match="keys"):
        shuffled_references(aligned, keys[:3])


# ---------------------------------------------------------------- method mechanics
def _method(*extra: str):
    return build_method("neco", *SMALL, *extra)


def _batch(cfg, batch: int = 3, seed: int = 0) -> dict:
    """Views of one random 96 px image, with sample keys."""
    gen = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, 96, 96, generator=gen) * 255).to(torch.uint8)
    out = view_batch(cfg, [image] * batch, seed)
    out["key"] = torch.randint(2**62, (batch,), generator=gen)
    return out


def test_network_learning_rates_and_independent_teacher_head(single_thread):
    method, cfg = _method()
    s, t = method.student, method.teacher
    assert torch.equal(s.backbone.model.pos_embed, t.backbone.model.pos_embed)
    assert not torch.equal(s.head.mlp[0].weight, t.head.mlp[0].weight)  # the code's default
    assert all(not p.requires_grad for p in t.parameters())
    copied, _ = _method("neco.independent_teacher_head=false")
    pairs = zip(copied.student.named_parameters(), copied.teacher.parameters(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name
    scales = {n: g["lr_scale"] for g in method.param_groups(0.04) for n in g["names"]}
    assert all(scales[n] == (10.0 if n.startswith("student.head.") else 1.0) for n in scales)
    embeddings, _ = t.embed_views(_batch(cfg)["crops"])
    assert [e.shape for e in embeddings] == [(3, 16, 8, 8)] * 2 + [(3, 16, 4, 4)] * 2
    assert torch.allclose(embeddings[0].norm(dim=1), torch.ones(3, 8, 8), atol=1e-5)


def test_loss_step_gradients_and_diagnostics(single_thread):
    method, cfg = _method()
    out = method.loss(_batch(cfg), INFO)
    assert {"loss", "embedding_std", "teacher_student_cosine", "patch_std"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert method.student.backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert method.student.head.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


@pytest.mark.parametrize("lag", [False, True])
def test_teacher_lag_option(lag, single_thread):
    """On (the code): EMA towards the student of before the optimiser step. Off: after."""
    method, cfg = _method(f"neco.teacher_lag={str(lag).lower()}")
    method.loss(_batch(cfg, batch=2), INFO)
    before = [p.detach().clone() for p in method.student.parameters()]
    teacher = [p.detach().clone() for p in method.teacher.parameters()]
    with torch.no_grad():  # stands in for the optimiser step
        for p in method.student.parameters():
            p.add_(1.0)
    method.update_teacher(0.9)
    after = list(method.student.parameters())
    for t_new, t_old, s_before, s_after in zip(
        method.teacher.parameters(), teacher, before, after, strict=True
    ):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * (s_before if lag else s_after), atol=1e-6)


def test_config_validation():
    for override, key in [
        ("neco.sort_network=merge", "sort_network"),
        ("neco.distribution=laplace", "distribution"),
        ("neco.similarity=dot", "similarity"),
        ("neco.student_steepness=0", "student_steepness"),
        ("neco.roi_align_size=0", "roi_align_size"),
    ]:
        with pytest.raises(ConfigError, match=key):
            _method(override)


def test_presets_follow_the_official_recipe():
    cfg = run_config("neco", preset="paper")
    p, o, v = cfg.params, cfg.optim, cfg.views
    assert (p.roi_align_size, p.student_steepness, p.teacher_steepness) == (7, 100.0, 100.0)
    assert (p.sort_network, p.distribution, p.similarity) == ("bitonic", "cauchy", "cosine")
    assert (p.projection_dim, p.hidden_dim, p.num_layers, p.head_lr_scale) == (256, 2048, 3, 10)
    assert p.independent_teacher_head and p.teacher_lag
    assert (cfg.data.batch_size, o.epochs, o.lr, o.warmup_epochs) == (45, 50, 1e-5, 0)
    assert (o.momentum_teacher, o.weight_decay, o.weight_decay_end) == (0.9995, 0.04, 0.5)
    assert (v.num_global, v.global_size, v.num_local, v.local_size) == (2, 224, 4, 96)
    assert (v.flip_prob, v.min_overlap) == (0.0, 0.01)
    assert cfg.backbone.patch_size == 16 and cfg.backbone.drop_path_rate == 0.1


# ------------------------------------------------------------------- tiny run on scenes
def test_tiny_preset_learns_on_scenes(tmp_path, single_thread):
    """The first 20 steps of the tiny recipe (its 600-step schedules; a 2-block 64-d ViT,
    batch 8): the ordering loss falls and the embeddings do not collapse.

    Measured once (1 thread, ~19 s): loss 3.52 (steps 1-10) → 3.13 (11-20) → 3.09 (21-30);
    ``embedding_std`` 0.08 throughout.
    """
    cfg = run_config(
        "neco", *scenes(64, 8), *CPU, *VIT_2X64, "train.log_every=10", "optim.steps=600"
    )
    run = tmp_path / "neco"
    Trainer(cfg, run).fit(stop_at=20)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [10, 20]
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"] - 0.2, (first["loss"], last["loss"])
    assert last["embedding_std"] > 0.04  # not collapsed to one point


def test_resume_is_exact(tmp_path, single_thread):
    """Stopping after 2 steps and resuming gives the straight 4-step run bit for bit (the
    references and the queue picks are keyed by sample, the smoke preset's queue is in the
    checkpoint, the teacher-lag snapshot lives within a step)."""
    cfg = run_config("neco", *CPU, "optim.steps=4", "train.log_every=1", preset="smoke")
    Trainer(cfg, tmp_path / "straight").fit()
    Trainer(cfg, tmp_path / "resumed").fit(stop_at=2)
    Trainer(cfg, tmp_path / "resumed").fit()
    states = [
        torch.load(
            tmp_path / run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
        )
        for run in ("straight", "resumed")
    ]
    assert states[0]["step"] == states[1]["step"] == 4
    assert states[0]["model"].keys() == states[1]["model"].keys()
    for key, value in states[0]["model"].items():
        assert torch.equal(value, states[1]["model"][key]), key
    losses = [[r["loss"] for r in read_metrics(tmp_path / run)] for run in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_soft_ranks_stay_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(2)
    queries, refs = torch.randn(2, 8, 3, 3, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)
    sorter = DiffSort(9, steepness=100.0)
    exact = soft_ranks(queries, refs, sorter, "cosine")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = soft_ranks(queries, refs, sorter, "cosine")
    assert mixed.dtype == torch.float32 and torch.equal(mixed, exact)
