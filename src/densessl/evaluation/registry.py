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

from densessl.data.segmentation.registry import dataset_names
from densessl.errors import ConfigError, brief
from densessl.evaluation.linear.probe import (
    LinearProtocol,
    describe_linear,
    summarize_linear,
    train_linear_probe,
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
        val_split: the scored split.
        train_options: per-dataset options of the train split (Leopart's 10 % of COCO).
        real_preset: builds the settings for real datasets from overrides (default: the
            dataclass itself).
        datasets: the dataset layouts it accepts (default: every registered one).
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
    train_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    real_preset: Callable[..., Any] | None = None
    datasets: tuple[str, ...] = field(default_factory=dataset_names)
    aliases: tuple[str, ...] = ()

    def setting_names(self) -> list[str]:
        """The ``key=value`` settings this protocol takes (the dataclass's fields)."""
        return [f.name for f in dataclasses.fields(self.settings)]

    def splits(self, dataset: str) -> tuple[str | None, str]:
        """``(train split or None, scored split)`` on ``dataset``."""
        if self.train_split is None:
            return None, self.val_split
        return self.train_splits.get(dataset, self.train_split), self.val_split

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
