"""``densessl finetune seg`` in a process group: 2 processes x B/2 train like 1 x B (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from densessl.evaluation.finetune.api import finetune
from densessl.io.checkpoint import load_file
from densessl.models.vit import BackboneConfig, build_backbone

SETTINGS = ["iterations=3", "batch_size=4", "data.num_images=8", "log_every=1", "lr=0.05"]


def _backbone():
    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_tiny", patch_size=8, img_size=64, depth=1, embed_dim=32,
                            num_heads=2)  # fmt: skip
    return build_backbone(config)


def _run(out: Path) -> dict:
    return finetune("seg", _backbone(), out=out, decoder="linear", overrides=SETTINGS,
                    device="cpu", progress=False, verbose=False)  # fmt: skip


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        _run(Path(out))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_finetune_like_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run(tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    ddp = json.loads((tmp_path / "ddp" / "finetune.json").read_text())
    losses = [h["loss"] for h in ddp["results"]["history"]]
    assert losses == pytest.approx([h["loss"] for h in single["results"]["history"]], rel=1e-5)
    a = load_file(tmp_path / "ddp" / "finetune.pt")["model"]
    b = load_file(tmp_path / "single" / "finetune.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    assert ddp["results"]["miou"] == pytest.approx(single["results"]["miou"], abs=1e-6)
    assert ddp["results"]["num_pixels"] == single["results"]["num_pixels"]
