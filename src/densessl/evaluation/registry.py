"""The protocol registry: one record per evaluation protocol.

A record holds everything the rest of the library needs to know about a protocol: its
settings dataclass (pinned defaults = the official pipeline, with a ``for_scenes`` CPU
preset), how to run it, the official code it follows, the splits it uses, the dataset
layouts it accepts, and its one-line description and CLI help. ``densessl eval``, the
Python :func:`densessl.evaluation.api.evaluate` and the printed reports read these records;
nothing else chooses a protocol by name. Adding a protocol is its module, one
:func:`register_protocol` call below and its tests (``docs/adding-a-protocol.md``).

Every record's ``run`` has one signature::

    run(extractor, train, val, settings, device=..., progress=...) -> dict

``train`` is None for protocols that use no training split (``train_split=None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from densessl.data.registry import KINDS, dataset_names
from densessl.errors import ConfigError, brief
from densessl.evaluation.correspondence.protocol import (
    CorrespondenceProtocol,
    describe_correspondence,
    evaluate_correspondence,
    summarize_correspondence,
)
from densessl.evaluation.discovery import (
    DiscoveryProtocol,
    describe_discovery,
    evaluate_discovery,
    summarize_discovery,
)
from densessl.evaluation.knn import KNNProtocol, describe_knn, evaluate_knn, summarize_knn
from densessl.evaluation.linear.probe import (
    LinearProtocol,
    describe_linear,
    summarize_linear,
    train_linear_probe,
)
from densessl.evaluation.linear_classifier import (
    LinearClassifierProtocol,
    describe_linear_cls,
    evaluate_linear_cls,
    summarize_linear_cls,
)
from densessl.evaluation.overcluster import OverclusterProtocol, evaluate_overclustering
from densessl.evaluation.overcluster_summary import (
    describe_overclustering,
    summarize_overclustering,
)
from densessl.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval
from densessl.evaluation.retrieval_summary import describe_retrieval, summarize_retrieval
from densessl.evaluation.unsupervised.pipeline import evaluate_unsupervised
from densessl.evaluation.unsupervised.settings import (
    UnsupervisedProtocol,
    describe_unsupervised,
    summarize_unsupervised,
)
from densessl.evaluation.video.protocol import (
    VideoProtocol,
    describe_video,
    evaluate_video,
    summarize_video,
)

Runner = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ProtocolRecord:
    """An evaluation protocol.

    Attributes:
        name: the name users type (``densessl eval NAME``).
        description: one line for the CLI's protocol list and reports.
        settings: the settings dataclass; its defaults are the official pipeline on real
            datasets and its ``for_scenes(image_size=..., **overrides)`` classmethod the
            CPU preset on the synthetic scenes.
        run: ``run(extractor, train, val, settings, device=, progress=) -> results``.
        describe: ``describe(settings) -> str``, the settings in words beside each number.
        summarize: ``summarize(settings, results) -> rows`` of ``result``, ``miou``,
            ``std``, ``matching``.
        source: the official code it follows (repository @ commit, file); in every result.
        help: tuning advice for ``densessl eval NAME --help``.
        train_split: split the protocol trains or builds a memory on (None: it uses only
            the scored split); ``train_splits`` overrides it per dataset.
        val_split: the scored split; ``val_splits`` overrides it per dataset.
        train_options: per-dataset options of the train split (Leopart's 10 % of COCO).
        real_preset: builds the settings for real datasets from overrides (default: the
            dataclass itself).
        kind: the kind of dataset it reads (:data:`densessl.data.registry.KINDS`:
            ``segmentation``, ``classification``, ``boxes``, ``video``, ``keypoint_pairs``);
            ``--dataset`` names a layout of that kind, ``scenes`` its synthetic counterpart.
        datasets: the layouts of ``kind`` it accepts (default: every registered one).
        aliases: other names accepted for it.
    """

    name: str
    description: str
    settings: type
    run: Runner
    describe: Callable[[Any], str]
    summarize: Callable[[Any, dict[str, Any]], list[dict[str, Any]]]
    source: str
    help: str = ""
    train_split: str | None = "train"
    train_splits: Mapping[str, str] = field(default_factory=dict)
    val_split: str = "val"
    val_splits: Mapping[str, str] = field(default_factory=dict)
    train_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    real_preset: Callable[..., Any] | None = None
    datasets: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    kind: str = "segmentation"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"protocol {self.name!r}: kind {self.kind!r} not in {list(KINDS)}")
        if not self.datasets:
            object.__setattr__(self, "datasets", dataset_names(self.kind))
        unknown = sorted(set(self.datasets) - set(dataset_names(self.kind)))
        if unknown:
            raise ValueError(f"protocol {self.name!r}: no {self.kind} datasets {unknown}")

    def setting_names(self) -> list[str]:
        """The ``key=value`` settings this protocol takes (the dataclass's fields)."""
        return [f.name for f in dataclasses.fields(self.settings)]

    def splits(self, dataset: str) -> tuple[str | None, str]:
        """``(train split or None, scored split)`` on ``dataset``."""
        val = self.val_splits.get(dataset, self.val_split)
        if self.train_split is None:
            return None, val
        return self.train_splits.get(dataset, self.train_split), val

    def resolve(
        self, dataset: str, settings: Mapping[str, Any], image_size: int | None = None
    ) -> Any:
        """The settings dataclass: the dataset's preset with ``settings`` applied.

        Raises:
            ConfigError: a value the protocol refuses (its ``__post_init__`` checks).
        """
        values = dict(settings)
        try:
            if dataset == "scenes":
                size = values.pop("image_size", image_size or 96)
                return self.settings.for_scenes(image_size=size, **values)
            if self.real_preset is not None:
                return self.real_preset(**values)
            return self.settings(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid {self.name} settings: {err}") from err


_PROTOCOLS: dict[str, ProtocolRecord] = {}


def register_protocol(record: ProtocolRecord) -> ProtocolRecord:
    """Make ``record`` available by its name and aliases."""
    taken = {alias for r in _PROTOCOLS.values() for alias in (r.name, *r.aliases)}
    clash = [n for n in (record.name, *record.aliases) if n in taken]
    if clash and _PROTOCOLS.get(record.name) != record:
        raise ValueError(f"protocol name {clash[0]!r} is already registered")
    _PROTOCOLS[record.name] = record
    return record


def list_protocols() -> dict[str, ProtocolRecord]:
    """Every registered protocol by name, in registration order."""
    return dict(_PROTOCOLS)


def get_protocol(name: str) -> ProtocolRecord:
    """The record of ``name`` or one of its aliases.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    for record in _PROTOCOLS.values():
        if name == record.name or name in record.aliases:
            return record
    raise ConfigError(f"unknown protocol {brief(name)}; choose one of {', '.join(_PROTOCOLS)}")


def _transductive(run: Runner) -> Runner:
    """Adapt ``run(extractor, val, settings, ...)`` to the registry's signature."""

    def run_on_val(extractor: Any, train: Any, val: Any, settings: Any, **kw: Any) -> dict:
        return run(extractor, val, settings, **kw)

    return run_on_val


register_protocol(
    ProtocolRecord(
        name="linear",
        description="Leopart linear probe (train split -> val)",
        settings=LinearProtocol,
        run=train_linear_probe,
        describe=describe_linear,
        summarize=summarize_linear,
        source="MkuuWaUjinga/leopart @7835701, experiments/linear_probing/linear_finetune.py",
        help="A 1x1 conv on frozen patch features, trained with SGD on the train split "
        "(VOC: trainaug; COCO: a seeded 10% of train2017), mIoU on val without matching. "
        "head=fcn trains an FCN head instead; cache_views=N trades augmentation for speed.",
        train_splits={"voc": "trainaug"},
        train_options={"cocostuff": {"fraction": 0.1}, "cocothings": {"fraction": 0.1}},
    )
)
register_protocol(
    ProtocolRecord(
        name="cluster",
        description="Leopart overclustering (val, transductive)",
        settings=OverclusterProtocol,
        run=_transductive(evaluate_overclustering),
        describe=describe_overclustering,
        summarize=summarize_overclustering,
        source="MkuuWaUjinga/leopart @7835701, experiments/overcluster/sup_overcluster.py",
        help="Standardise, PCA-50, k-means on the val split's patch features; Hungarian "
        "matching at K = C, greedy many-to-one by precision otherwise; mean ± std over seeds. "
        "Real data: num_clusters=[C,300,500] with faiss PCA and k-means as Leopart (pip "
        "install 'densessl[faiss]'); backend=torch approximates without faiss; "
        "drop_last=false scores every image (Leopart's VOC loader drops the last 9).",
        train_split=None,
        real_preset=OverclusterProtocol.for_voc,
        aliases=("overcluster", "overclustering"),
    )
)
register_protocol(
    ProtocolRecord(
        name="retrieval",
        description="Hummingbird dense nearest-neighbour retrieval (train memory -> val)",
        settings=RetrievalProtocol,
        run=evaluate_retrieval,
        describe=describe_retrieval,
        summarize=summarize_retrieval,
        source="vpariza/open-hummingbird-eval @5e79da2, hbird/hbird_eval.py",
        help="A memory of soft-labelled patches from the train split (rare-class sampling, "
        "augmented passes); each val patch takes the labels of its k nearest neighbours. "
        "memory_size=null keeps every patch (exact, slow); search_backend=faiss for speed.",
        train_splits={"voc": "trainaug"},
        aliases=("hummingbird",),
    )
)
register_protocol(
    ProtocolRecord(
        name="unsupervised",
        description="Leopart fully-unsupervised segmentation: CBFE + community detection "
        "(train labels choose the cut and CD settings, val scored)",
        settings=UnsupervisedProtocol,
        run=evaluate_unsupervised,
        describe=describe_unsupervised,
        summarize=summarize_unsupervised,
        source="MkuuWaUjinga/leopart @840e365, experiments/fully_unsup_seg/fully_unsup_seg.py",
        help="Cluster-based foreground extraction from CLS attention, foreground k-means, "
        "community detection on the cluster co-occurrence graph (community=infomap as the "
        "paper, or leiden; pip install 'densessl[unsupervised]'). As in the paper, train "
        "labels choose the CBFE cut and the CD settings; the output says so.",
        aliases=("fully_unsupervised", "cbfe"),
    )
)
register_protocol(
    ProtocolRecord(
        name="knn",
        description="DINO weighted k-NN classification on image features (train -> val)",
        settings=KNNProtocol,
        run=evaluate_knn,
        describe=describe_knn,
        summarize=summarize_knn,
        source="facebookresearch/dino @7c446df, eval_knn.py",
        help="L2-normalised CLS features (mean of patches for backbones without CLS: "
        "pool=mean forces it); each val image takes the exp(sim/T)-weighted vote of its k "
        "nearest train images (k=20, T=0.07); top-1/top-5. extra_neighbors=[10,100,200] "
        "scores more k on the same features.",
        kind="classification",
        aliases=("knn_classification",),
    )
)
register_protocol(
    ProtocolRecord(
        name="discovery",
        description="LOST single-object discovery, CorLoc (one box per image)",
        settings=DiscoveryProtocol,
        run=evaluate_discovery,
        describe=describe_discovery,
        summarize=summarize_discovery,
        source="valeoai/LOST @fcedbec, main_lost.py + object_discovery.py",
        help="Last-block attention keys of each full-resolution image (padded to the patch "
        "size); the seed is the patch with the fewest positive correlations, expanded over "
        "the k_patches=100 lowest-degree patches; the seed's connected component gives one "
        "box; CorLoc = share of images with IoU >= 0.5 to any GT box. features=patches for "
        "backbones without attention keys; max_side=N shrinks large images.",
        train_split=None,
        val_splits={"voc07": "trainval", "voc12": "trainval", "coco20k": "train"},
        kind="boxes",
        aliases=("lost", "corloc"),
    )
)
register_protocol(
    ProtocolRecord(
        name="linear_cls",
        description="DINO linear classifier on frozen image features (train -> val)",
        settings=LinearClassifierProtocol,
        run=evaluate_linear_cls,
        describe=describe_linear_cls,
        summarize=summarize_linear_cls,
        source="facebookresearch/dino @7c446df, eval_linear.py",
        help="A linear layer on the concatenated CLS tokens of the last n_last_blocks=4 "
        "blocks (ViT-B: n_last_blocks=1 avgpool_patchtokens=true), SGD lr 0.001*batch/256, "
        "cosine, 100 epochs; top-1 of the last and the best epoch. Trains on cached "
        "central-crop features (the official script augments every epoch).",
        kind="classification",
        aliases=("linear_classifier", "linear_classification"),
    )
)
register_protocol(
    ProtocolRecord(
        name="video",
        description="DAVIS-2017 semi-supervised label propagation (DINO), J&F-Mean",
        settings=VideoProtocol,
        run=_transductive(evaluate_video),
        describe=describe_video,
        summarize=summarize_video,
        source="facebookresearch/dino @7c446df, eval_video_segmentation.py; scored as "
        "davisvideochallenge/davis2017-evaluation @ac7c43f, evaluation_method.py "
        "--task semi-supervised",
        help="The first frame's mask is propagated by patch-feature affinities: context = "
        "first frame + n_last_frames=7 previous, exp(cos/0.1), top-5, a 12-patch window; "
        "frames at 480 px short side (long side floored to x64); J (IoU) and F (boundary, "
        "tolerance 0.008 of the diagonal) per object, objects pooled. std_typo=true (the "
        "default) normalises with DINO's 0.228 as the published numbers; neighbourhood=0 "
        "drops the window. Memory: one sequence's features at a time.",
        train_split=None,
        kind="video",
        aliases=("davis", "label-propagation"),
    )
)
register_protocol(
    ProtocolRecord(
        name="correspondence",
        description="SPair-71k keypoint correspondence by nearest-neighbour patch features, "
        "PCK@0.1 by the target box",
        settings=CorrespondenceProtocol,
        run=_transductive(evaluate_correspondence),
        describe=describe_correspondence,
        summarize=summarize_correspondence,
        source="mbanani/probe3d @a1f1464, evaluate_spair_correspondence.py (pairs, split "
        "and box from the SPair-71k toolkit, Min et al. 2019)",
        help="Each source keypoint's feature (bilinear on the patch grid) is matched to the "
        "most similar target patch; correct when closer than alpha=0.1 x the target box's "
        "max side. Images padded to a white square and resized to image_size=800 (a "
        "multiple of the patch size: 798/812 for patch 14). pck = mean over categories "
        "(Probe3D), pck_keypoints = all keypoints pooled. predict_at=centre, "
        "align_corners=false or soft_argmax=true change Probe3D's matching conventions; "
        "pairs_per_category=200 scores a seeded subset as Probe3D's sampling.",
        train_split=None,
        val_split="test",
        kind="keypoint_pairs",
        aliases=("spair", "keypoints"),
    )
)


def _multilayer_record() -> ProtocolRecord:
    from densessl.evaluation.linear.multilayer import (
        MultiLayerProtocol,
        describe_multilayer,
        train_multilayer_probe,
    )

    return ProtocolRecord(
        name="linear4",
        description="DINOv2 multi-layer linear probe: last 4 blocks + BN + 1x1 (train -> val)",
        settings=MultiLayerProtocol,
        run=train_multilayer_probe,
        describe=describe_multilayer,
        summarize=summarize_linear,
        source="facebookresearch/dinov2 @b8931f7, dinov2/eval/segmentation/models/"
        "decode_heads/linear_head.py (BNHead); training recipe: Leopart's linear probe",
        help="The patch tokens of the last num_blocks blocks (final norm applied) "
        "concatenated, BatchNorm, a 1x1 conv, on frozen features; image_size=512 for "
        "DINOv2's 512 crops. Leopart's probe pipeline and SGD recipe otherwise.",
        train_splits={"voc": "trainaug"},
        train_options={"cocostuff": {"fraction": 0.1}, "cocothings": {"fraction": 0.1}},
        aliases=("dinov2_linear",),
    )


register_protocol(_multilayer_record())
