"""Shared tiny configuration for the robustness tests (a 1-block ViT on 64 px scenes)."""

from __future__ import annotations

from densessl.config import build_run_config
from densessl.methods import get_method

TINY = [
    "data.scenes_num_images=16",
    "data.scenes_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.precision=fp32",
    "train.progress=false",
    "train.log_every=1",
    "backbone.depth=1",
    "backbone.embed_dim=32",
    "backbone.num_heads=2",
    "dino.out_dim=32",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "views.global_size=32",
    "views.local_size=16",
    "views.num_local=2",
    "optim.warmup_epochs=0.5",
]


def tiny_config(*extra: str, method: str = "dino"):
    """The tiny DINO run config with ``extra`` ``key=value`` overrides."""
    return build_run_config(method, get_method(method).Params, "tiny", [*TINY, *extra])
