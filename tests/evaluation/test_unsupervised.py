"""Fully-unsupervised segmentation (Leopart CBFE + community detection): the co-occurrence
matrix against skimage, both community backends on a hand-built graph, CBFE's cluster
precisions and cut, oracle features end to end, and ``densessl eval unsupervised``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import densessl
from densessl.cli import main
from densessl.errors import ConfigError
from densessl.evaluation import api
from densessl.evaluation.preprocess import resize_label
from densessl.evaluation.unsupervised.cbfe import (
    choose_threshold,
    cluster_foreground_counts,
    cluster_precisions,
    foreground_clusters,
    foreground_iou,
)
from densessl.evaluation.unsupervised.community import (
    LEOPART_ANGLES,
    cooccurrence_matrix,
    cooccurrence_offsets,
    find_communities,
    graph_edges,
    merge_clusters,
)
from densessl.evaluation.unsupervised.community_search import (
    partition_is_valid,
    pixel_weights,
    score_partition,
    upsample_maps,
)
from densessl.evaluation.unsupervised.pipeline import SplitData, segment_unsupervised
from densessl.evaluation.unsupervised.settings import (
    UnsupervisedProtocol,
    background_classes,
    foreground_labels,
)

#: Small CD grid and few seeds: each end-to-end run takes a few seconds on 2 CPU cores.
FAST = {
    "k_community": [16],
    "weight_threshold": [0.02, 0.05],
    "cd_seeds": [1, 2],
    "iters": 20,
    "n_init": 1,
}
SCENES = {"num_images": 40, "size": 64}  # 32 train / 8 val scenes, 8x8 patches of 8 px


#: One intra-op thread for every test here: on 2 shared cores, 2 threads oversubscribe and
#: the many small k-means steps run 10-30x slower.
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- co-occurrence
def _reference_cooccurrence(maps: np.ndarray, levels: int, angles) -> np.ndarray:
    """Spec §4.5 step 2-3 with skimage's greycomatrix (what Leopart's create_matrix calls)."""
    from skimage.feature import graycomatrix

    total = np.zeros((levels, levels))
    appearances = np.zeros(levels)
    for image in maps:
        glcm = graycomatrix(image.astype(np.uint8), [1, 2], list(angles), levels=levels)
        counts = glcm.sum(axis=(2, 3)).astype(float)
        np.fill_diagonal(counts, 0)
        rows = counts.sum(axis=1, keepdims=True)
        total += np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        appearances += rows[:, 0] > 0
    return np.divide(total, appearances[:, None], out=np.zeros_like(total),
                     where=appearances[:, None] > 0)  # fmt: skip


@pytest.mark.parametrize("fix_typo", [False, True])
def test_cooccurrence_matrix_equals_skimage_greycomatrix(fix_typo):
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 6, (5, 4, 4), generator=gen)
    maps = blocks.repeat_interleave(3, 1).repeat_interleave(3, 2)  # [5, 12, 12], blobs
    maps[0, :, :] = 5  # an image holding a single cluster: no co-occurrence, no appearance
    maps[1, 0, 0] = 6  # cluster 6 appears once, cluster 7 never
    angles = list(LEOPART_ANGLES)
    if fix_typo:
        angles[5] = 1.25 * math.pi
    ours = cooccurrence_matrix(maps, 8, cooccurrence_offsets((1, 2), fix_typo), max_bins=200)
    reference = _reference_cooccurrence(maps.numpy(), 8, angles)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-12, atol=1e-12)
    assert ours[7].sum() == 0 and torch.allclose(ours[:7].sum(1), torch.ones(7, dtype=ours.dtype))
    # The official 4π/3 differs from 5π/4 only at distance 2: (-2, -1) instead of (-1, -1).
    typo, fixed = cooccurrence_offsets((1, 2)), cooccurrence_offsets((1, 2), True)
    assert [i for i in range(16) if typo[i] != fixed[i]] == [13]
    assert (typo[13], fixed[13]) == ((-2, -1), (-1, -1))


# --------------------------------------------------------------------------- communities
def _two_groups_matrix() -> torch.Tensor:
    """Nodes 0-3 and 4-6 densely linked, one weaker bridge 3-4, node 7 alone, one asymmetric
    pair (2, 7) that must not become an edge."""
    a = torch.zeros(8, 8, dtype=torch.float64)
    for group in ((0, 1, 2, 3), (4, 5, 6)):
        for i in group:
            for j in group:
                if i != j:
                    a[i, j] = 0.3
    a[3, 4] = a[4, 3] = 0.06
    a[2, 7], a[7, 2] = 0.5, 0.01
    return a


def test_graph_edges_keep_pairs_where_both_directions_reach_the_threshold():
    edges = graph_edges(_two_groups_matrix(), 0.05)
    assert (3, 4, pytest.approx(0.06)) in edges
    assert all(7 not in e[:2] for e in edges) and all(i < j for i, j, _ in edges)
    assert len(edges) == 6 + 3 + 1
    assert len(graph_edges(_two_groups_matrix(), 0.1)) == 9  # the bridge is gone


@pytest.mark.parametrize("method", ["infomap", "leiden"])
def test_both_backends_find_the_hand_built_communities(method):
    edges = graph_edges(_two_groups_matrix(), 0.05)
    for seed in (1, 2, 3):
        found = find_communities(edges, method, seed, markov_time=1.0, resolution=1.0,
                                 num_modules=2)  # fmt: skip
        mapping = merge_clusters(found, 8).tolist()
        assert mapping[0] == mapping[1] == mapping[2] == mapping[3] != 0
        assert mapping[4] == mapping[5] == mapping[6] != 0
        assert mapping[0] != mapping[4]
        assert mapping[7] == 0  # no edge above the threshold: merged id 0, as in Leopart
        assert sorted(set(mapping)) == [0, 1, 2]
    assert find_communities([], method) == {}


#: Leopart's own ``PredsmIoU(4, 4).compute(True, many_to_one=False)`` (MkuuWaUjinga/leopart
#: @7835701, ``experiments/utils.py``; run once outside this repository with its Metric base
#: and joblib stubbed, numpy 2.4.6, scipy 1.17.1) on the case below: 4 communities (ids 1-4)
#: over 10 clusters with 4 classes, so community 4 is never matched and stays background.
OFFICIAL_4_COMMUNITIES = (0.23697489001917046, [318, 322, 0, 153], [894, 170, 0, 143])


def _official_case() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, 2000)
    clusters = (gt * 2 + rng.integers(0, 3, 2000)) % 10
    conf = torch.zeros(10, 4, dtype=torch.float64)
    index = (torch.from_numpy(clusters), torch.from_numpy(gt))
    conf.index_put_(index, torch.ones(2000, dtype=torch.float64), accumulate=True)
    return conf, torch.tensor([1, 2, 2, 3, 3, 4, 4, 1, 2, 4])


def test_as_many_communities_as_classes_are_scored_and_accepted_as_leopart():
    conf, mapping = _official_case()
    miou, iou, num_ids = score_partition(conf, mapping, num_pred=4)
    expected, tp, fp = OFFICIAL_4_COMMUNITIES
    assert miou == pytest.approx(expected, abs=1e-12) and num_ids == 5
    assert iou[0] == pytest.approx(tp[0] / (tp[0] + fp[0] + (conf[:, 0].sum() - tp[0])))
    assert partition_is_valid(conf, mapping, 4)  # Leopart accepts C communities
    unassigned = mapping.clone()
    unassigned[0] = 0  # a cluster in no community: 5 distinct ids, PredsmIoU's assert fails
    assert not partition_is_valid(conf, unassigned, 4)
    assert not partition_is_valid(conf, mapping + 1, 4)  # an id above C
    assert partition_is_valid(conf, mapping.clamp(max=3), 4)


def test_score_partition_merges_rows_then_matches():
    # clusters 0,1 -> class 1; cluster 2 -> class 0 (background); cluster 3 -> class 2
    confusion = torch.tensor([[0, 5, 0], [0, 3, 0], [4, 0, 0], [0, 0, 2]])
    miou, iou, num_ids = score_partition(confusion, torch.tensor([1, 1, 0, 2]))
    assert (miou, iou, num_ids) == (1.0, [1.0, 1.0, 1.0], 3)
    miou, _, _ = score_partition(confusion, torch.arange(4))  # unmerged: 4 ids, 3 classes
    # Hungarian pairs cluster 0 with class 1 (IoU 5/8); the leftover cluster 1 goes to
    # background, whose IoU drops to 4/7
    assert miou == pytest.approx((4 / 7 + 5 / 8 + 1) / 3)


# --------------------------------------------------------------------------- CBFE
def test_cluster_precision_is_averaged_over_the_images_holding_the_cluster():
    clusters = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, 1]]])
    fg = torch.tensor([[[1, 1], [1, 1]], [[0, 1], [1, 0]]], dtype=torch.bool)
    precisions = cluster_precisions(clusters, fg, 3)
    # cluster 0: image 1 all inside (1.0), image 2 its one pixel outside (0.0) -> 0.5, not
    # the pooled 4/5; cluster 1: 2 of 3 inside; cluster 2: absent -> 0
    assert precisions.tolist() == pytest.approx([0.5, 2 / 3, 0.0])


def test_cbfe_cut_keeps_the_clusters_inside_the_attention():
    # 20 clusters, 8 foreground (12..19): each image is a 10x10 map of 4 clusters. The noisy
    # attention covers the foreground clusters and a growing share of background ones.
    gen = torch.Generator().manual_seed(0)
    n, k = 60, 20
    maps = torch.empty(n, 10, 10, dtype=torch.int64)
    for i in range(n):
        ids = torch.randperm(k, generator=gen)[:4]
        maps[i] = ids.repeat_interleave(25).reshape(10, 10)
    bg_precision = torch.linspace(0.0, 0.5, 12)
    attention = (
        torch.rand(n, 10, 10, generator=gen) < torch.cat([bg_precision, torch.ones(8)])[maps]
    )
    labels = torch.where(maps >= 12, maps - 11, torch.zeros_like(maps))
    labels[:, 0, 0] = 255  # ignored pixels do not count
    precisions = cluster_precisions(maps, attention, k)
    counts = cluster_foreground_counts(maps, labels, k)
    choice = choose_threshold(precisions, counts, (0.55, 0.75), 0.05)
    assert [c["num_background"] for c in choice["candidates"]] == [11, 12, 13, 14]
    assert choice["best_num_background"] == 12 and choice["best_fg_iou"] == 1.0
    assert choice["threshold"] == 1.0 - 0.05 and choice["best_precision"] == 1.0
    chosen = foreground_clusters(precisions, choice["threshold"])
    assert chosen.nonzero().flatten().tolist() == list(range(12, 20))
    assert float(foreground_iou(counts, chosen)) == 1.0


def test_pixel_weights_match_nearest_upsampling():
    maps = torch.arange(12).reshape(1, 3, 4)
    up = upsample_maps(maps, (10, 7))
    torch.testing.assert_close(
        up, torch.nn.functional.interpolate(maps[None].float(), (10, 7))[0].long()
    )
    counts = torch.bincount(up.flatten(), minlength=12).reshape(3, 4)
    assert torch.equal(pixel_weights(3, 4, (10, 7)), counts)


# --------------------------------------------------------------------------- labels
def test_background_classes_and_foreground_labels():
    from densessl.data.scenes.dataset import SyntheticScenes

    scenes = SyntheticScenes(num_images=4, split="val")
    assert background_classes(scenes) == [0, 1, 2]  # the stuff classes
    labels = torch.tensor([[0, 2, 3], [10, 255, 5]])
    out = foreground_labels(labels, 11, [0, 1, 2])
    assert out.tolist() == [[0, 0, 1], [8, 255, 3]]

    class VOCLike:
        num_classes, class_names = 3, ["background", "cat", "dog"]

    class Things:
        num_classes, class_names = 2, ["cat", "dog"]

    assert background_classes(VOCLike()) == [0]
    assert background_classes(Things(), [1]) == [1]
    with pytest.raises(ValueError, match="names no background class"):
        background_classes(Things())
    with pytest.raises(ValueError, match="every class is background"):
        background_classes(VOCLike(), [0, 1, 2])


# --------------------------------------------------------------------------- oracle features
def _oracle_split(split: str, noise: float, seed: int) -> SplitData:
    """Scenes at 24x24: one-hot class features + noise, attention exactly on the things."""
    from densessl.data.scenes.dataset import SyntheticScenes

    scenes = SyntheticScenes(num_images=100, size=64, split=split)
    raw = torch.stack([scenes[i]["label"] for i in range(len(scenes))]).long()
    raw = resize_label(raw, 24)
    tokens = torch.where(raw == 255, torch.zeros_like(raw), raw)
    gen = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.one_hot(tokens, 11).float() * 2
    features = features + noise * torch.randn(features.shape, generator=gen)
    return SplitData(features, tokens >= 3, foreground_labels(raw, 11, [0, 1, 2]))


@pytest.mark.parametrize("community", ["infomap", "leiden"])
def test_oracle_features_segment_almost_perfectly(community):
    torch.manual_seed(0)
    train, val = _oracle_split("train", 0.1, 0), _oracle_split("val", 0.1, 1)
    protocol = UnsupervisedProtocol.for_scenes(64, mask_size=24, community=community,
                                               cbfe_seeds=(0,), cd_seeds=(1, 2, 3))  # fmt: skip
    result = segment_unsupervised(train, val, protocol, num_classes=9)
    cbfe = result["cbfe"]
    assert cbfe["fg_iou"]["val"] > 0.97 and cbfe["fg_iou"]["train"] > 0.97
    assert cbfe["threshold"] >= 0.5 and cbfe["num_fg_clusters"]["val"] >= 8
    assert result["cbfe_only"]["miou_mean"] > 0.9
    cd = result["community"]
    assert cd["valid"] and cd["chosen_with"] == "train-split labels"
    assert cd["train_miou"] > 0.9 and cd["miou_mean"] > 0.9, cd["per_seed"]
    assert result["miou"] == cd["miou_mean"]
    assert len(cd["search"]) == 2 * 3 * 3 and len(cd["per_seed"]) == 3


# --------------------------------------------------------------------------- API and CLI
def test_protocol_presets_splits_and_checks():
    voc = api.resolve_protocol("unsupervised", "voc", {})
    assert (voc.image_size, voc.mask_size, voc.k_fg, voc.attention_mass) == (448, 100, 200, 0.65)
    assert voc.community == "infomap" and len(voc.cd_seeds) == 10 and 149 in voc.k_community
    assert api.default_splits("unsupervised", "voc") == ("train", "val")  # not trainaug
    scenes = api.resolve_protocol("unsupervised", "scenes", {}, image_size=64)
    assert (scenes.image_size, scenes.mask_size) == (64, 32)
    with pytest.raises(ConfigError, match="Infomap rejects seed 0"):
        api.resolve_protocol("unsupervised", "scenes", {"cd_seeds": (0, 1)})
    with pytest.raises(ConfigError, match="community must be one of"):
        api.resolve_protocol("unsupervised", "scenes", {"community": "louvain"})
    settings, _ = api._split_overrides("unsupervised", "scenes", None, {"k_community": 12})
    assert settings == {"k_community": (12,)}


def test_evaluate_unsupervised_on_scenes_with_a_random_vit(tmp_path, capsys):
    out = tmp_path / "unsup.json"
    record = densessl.evaluate(
        "unsupervised", backbone="random:vit_tiny", patch_size=8, data=SCENES, out=out,
        progress=False, cbfe_seeds=[0], **FAST,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == {k: v for k, v in record.items() if k != "json"}
    data = record["dataset"]
    assert (data["train_split"], data["num_train"], data["val_split"], data["num_val"]) == (
        "train", 32, "val", 8
    )  # fmt: skip
    results = record["results"]
    assert results["num_classes"] == 9 and results["class_names"][0] == "background"
    assert results["background_classes"] == ["stuff/gradient", "stuff/grain", "stuff/waves"]
    assert results["grid"] == [8, 8] and record["settings"]["mask_size"] == 32
    assert results["community"]["chosen"]["k_community"] == 16
    assert results["attention"] == "the evaluated backbone's own CLS attention"
    assert [r["result"] for r in record["summary"]] == ["CBFE+CD (infomap)", "CBFE only (K=8)"]
    for row in record["summary"]:
        assert 0.0 <= row["miou"] <= 1.0 and row["matching"] == "hungarian"
        assert f"{100 * row['miou']:.1f}" in printed
    assert "chosen with train-split labels" in printed
    assert "train-split labels chose the CBFE precision cut" in printed
    assert "k=16 wt={0.02,0.05}" in printed


def test_cli_eval_unsupervised_with_leiden_and_another_attention(tmp_path, capsys):
    # random:RUN_DIR builds the architecture of RUN_DIR/config.yaml: a 2-block ViT here
    small = tmp_path / "small-vit"
    small.mkdir()
    backbone = {"arch": "vit_tiny", "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
    (small / "config.yaml").write_text(json.dumps({"backbone": backbone}))
    out = tmp_path / "cli.json"
    argv = ["eval", "unsupervised", "--backbone", f"random:{small}", "--no-progress",
            "--out", str(out), "community=leiden", "resolution=[1.0]", "cbfe_seeds=[]",
            f"attention_backbone=random:{small}", "data.num_images=40", "data.size=64",
            *(f"{k}={json.dumps(v)}" for k, v in FAST.items())]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    results = record["results"]
    assert results["community"]["method"] == "leiden" and results["cbfe_only"] is None
    assert results["attention"] == f"CLS attention of random:{small}"
    assert "CBFE+CD (leiden)" in printed and "resolution=1" in printed
    assert len(results["community"]["search"]) == 2
    assert [r["result"] for r in record["summary"]] == ["CBFE+CD (leiden)"]


def test_configuration_errors_name_the_way_out(capsys):
    features = lambda images: images[:, :, ::8, ::8].permute(0, 2, 3, 1)  # noqa: E731
    with pytest.raises(ConfigError, match="attention_backbone="):
        densessl.evaluate("unsupervised", features, data=SCENES, verbose=False,
                          progress=False, device="cpu")  # fmt: skip
    argv = [
        "eval",
        "unsupervised",
        "--backbone",
        "random:vit_tiny",
        "background=[0,1,2,3,4,5,6,7,8,9,10]",
    ]
    assert main(argv) == 2
    assert "every class is background" in capsys.readouterr().err
