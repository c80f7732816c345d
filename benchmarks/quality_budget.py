"""What every row of the quality benchmark shares (``Budget``), its full and ``--quick``
sizes, and the budgets of ``--scenes-like NAME`` / ``--from-base WEIGHTS`` (``quality.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: The image-level and video columns at full size: their synthetic counterparts' defaults.
IMAGE_LEVEL: dict[str, dict[str, Any]] = {
    "knn": {},
    "discovery": {},
    "video": {"data": {"num_videos": 6, "num_frames": 8}},
    "correspondence": {"data": {"num_pairs": 24}},
}


@dataclass(frozen=True)
class Budget:
    """What every row shares. ``pretrain_overrides`` apply to every method's tiny preset."""

    steps: int = 4000
    batch_size: int = 16
    pretrain_scenes: int = 2000
    scenes_size: int = 96
    scenes_class_set: str = "distinct-cues"
    #: How the scenes are drawn beyond the class set (``SceneConfig``): colour mode, (fewest,
    #: most) objects, (smallest, largest) radius; ``--from-base densessl:NAME`` and
    #: ``--scenes-like NAME`` take a shipped base's own.
    scenes_colours: str = "instance"
    scenes_objects: tuple[int, int] = (1, 5)
    scenes_radius: tuple[float, float] = (0.12, 0.28)
    eval_scenes: int = 1000
    eval_seed: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    num_workers: int = 1
    checkpoint_every: int = 100
    depth: int = 4
    supervised_lr: float = 1e-3
    linear: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    #: protocol → {"data": dataset options, "settings": overrides} (``quality_columns.py``)
    image_level: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(IMAGE_LEVEL))
    #: ``densessl finetune seg`` overrides of the fine-tuned column ({} leaves it out)
    finetune: dict[str, Any] = field(default_factory=lambda: {"iterations": 300})
    pretrain_overrides: tuple[str, ...] = ()
    #: Post-training (``--from-base``): every method row starts from these backbone weights
    #: (a densessl run, checkpoint or export; ``densessl pretrain --init``) and a ``base`` row
    #: scores them without further training. None: the from-scratch table.
    init: str | None = None

    def scene_options(self) -> dict[str, Any]:
        """The scene world as ``SyntheticScenes`` options (training and evaluation alike)."""
        return {
            "class_set": self.scenes_class_set,
            "colours": self.scenes_colours,
            "objects": list(self.scenes_objects),
            "radius": list(self.scenes_radius),
        }

    def shared_overrides(self, seed: int) -> list[str]:
        return [
            f"optim.steps={self.steps}",
            f"data.batch_size={self.batch_size}",
            "data.path=scenes",
            f"data.scenes_num_images={self.pretrain_scenes}",
            f"data.scenes_size={self.scenes_size}",
            f"data.scenes_class_set={self.scenes_class_set}",
            f"data.scenes_colours={self.scenes_colours}",
            f"data.scenes_objects=[{self.scenes_objects[0]},{self.scenes_objects[1]}]",
            f"data.scenes_radius=[{self.scenes_radius[0]},{self.scenes_radius[1]}]",
            "data.scenes_seed=0",
            f"data.num_workers={self.num_workers}",
            "backbone.arch=vit_tiny",
            "backbone.patch_size=8",
            "backbone.embed_dim=128",
            f"backbone.depth={self.depth}",
            "backbone.num_heads=4",
            f"train.seed={seed}",
            f"train.checkpoint_every={self.checkpoint_every}",
            "train.progress=false",
            "train.precision=auto",
            *self.pretrain_overrides,
        ]


FULL = Budget()
QUICK = Budget(
    steps=3,
    batch_size=4,
    pretrain_scenes=40,
    eval_scenes=40,
    seeds=(0,),
    num_workers=0,
    checkpoint_every=2,
    depth=1,
    linear={"epochs": 2, "lr_step_epoch": 1},
    cluster={"seeds": [0], "n_init": 1, "iters": 5},
    retrieval={"memory_size": 2000},
    image_level={
        "knn": {},
        "discovery": {},
        "video": {"data": {"num_videos": 2, "num_frames": 4, "size": 64}},
        "correspondence": {"data": {"num_pairs": 4, "size": 64}},
    },
    finetune={"iterations": 2, "batch_size": 4},
)


def like_shipped(budget: Budget, name: str) -> Budget:
    """``budget`` on the scenes the shipped base ``densessl:name`` was trained on."""
    from densessl.models.shipped import SHIPPED

    if name not in SHIPPED:
        raise SystemExit(f"quality: unknown shipped base {name!r}; choose from {sorted(SHIPPED)}")
    from densessl.data.scenes.dataset import SyntheticScenes

    scene = SyntheticScenes(num_images=1, **SHIPPED[name].scenes).config  # its options mapped
    return dataclasses.replace(
        budget,
        scenes_class_set=scene.class_set,
        scenes_colours=scene.colours,
        scenes_objects=(scene.min_objects, scene.max_objects),
        scenes_radius=(scene.min_radius, scene.max_radius),
        scenes_size=scene.size,
    )


def choose_budget(
    quick: bool, scenes_like: str | None = None, from_base: str | None = None
) -> tuple[Budget, Path]:
    """The budget of ``--quick`` / ``--scenes-like NAME`` / ``--from-base WEIGHTS`` and its
    default report folder (``results``, ``results/scenes-NAME``, ``results/posttrain``)."""
    budget, folder = (QUICK if quick else FULL), HERE / "results"
    if scenes_like is not None:
        budget = like_shipped(budget, scenes_like)
        folder = HERE / "results" / f"scenes-{scenes_like}"
    if from_base is not None:
        shipped = from_base.startswith("densessl:")
        init = from_base if shipped else str(Path(from_base).resolve())
        budget = dataclasses.replace(budget, init=init)
        if shipped:  # a shipped base is post-trained and scored on its own scenes
            budget = like_shipped(budget, from_base.partition(":")[2])
        folder = HERE / "results" / "posttrain"
    return budget, folder
