"""One error path: every user error ends as ``densessl: error: ...`` (exit 2, no traceback),
also when it is raised inside a DataLoader worker; ``--debug`` / ``DENSESSL_DEBUG=1`` show
the traceback. A full disk says so and names the folder, for checkpoints, exports and
evaluation results.

Already covered elsewhere: ``R/test_robust_config.py::test_cli_errors_exit_2_before_training``
(config values, missing data), ``R/test_robust_readers.py`` (export / eval / viz targets
that exist), ``R/test_robust_run_dir.py`` (``--out``).
"""

from __future__ import annotations

import errno
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import densessl.evaluation.result_file as result_file
import densessl.io.checkpoint as ckpt
from densessl.cli import main
from densessl.data.scenes.dataset import write_scenes
from densessl.io.writes import DiskFullError
from densessl.methods.base import get_method
from densessl.models.vit import BackboneConfig, build_backbone
from densessl.train.trainer import Trainer
from helpers import ROBUST_RUN as TINY
from helpers import robust_config as tiny_config


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.startswith("densessl: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("DENSESSL_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["pretrain", "--out", "{tmp}/r", *TINY, "train.device=cuda:99"], "train.device='cuda:99'"),
        (["pretrain", "--out", "{tmp}/r", *TINY, "train.device=tpu0"], "is not a device name"),
        (["eval", "linear", "--backbone", "random:vit_tiny", "--device", "cuda:99"], "--device"),
    ],
)
def test_a_device_that_is_not_there_is_a_one_line_error(tmp_path, capsys, argv, needle):
    code, err = _run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 10, 64, 0, progress=False)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["ids", "size"])
def test_bad_label_files_name_the_file_also_from_a_worker(
    tmp_path, capsys, scenes, workers, damage
):
    import shutil

    root = tmp_path / "scenes"
    shutil.copytree(scenes, root)
    for label in (root / "labels").glob("*.png"):
        bad = np.full((64, 64) if damage == "ids" else (32, 32), 200 if damage == "ids" else 1)
        Image.fromarray(bad.astype(np.uint8), mode="L").save(label)
    argv = ["eval", "linear", "--backbone", "random:vit_tiny", "--root", str(root),
            "--no-progress", "epochs=1", f"num_workers={workers}"]  # fmt: skip
    code, err = _run(argv, capsys)
    _one_line_error(code, err, str(root / "labels"))
    assert ("outside the known range" if damage == "ids" else "but image") in err


def test_a_corrupt_image_read_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    """torch re-raises a worker's error with the worker traceback in its message (as a
    RuntimeError when the type cannot be rebuilt from one string, as ImageDecodeError)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "bad.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header ok
    argv = ["pretrain", "--out", str(tmp_path / "r"), "--data", str(folder), *TINY,
            "data.num_workers=1", "data.on_corrupt=raise", "data.batch_size=2",
            "optim.steps=8"]  # fmt: skip
    code, err = _run(argv, capsys)
    _one_line_error(code, err, "cannot decode image", "bad.jpg")


def test_a_non_finite_loss_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    cls = get_method("dino")
    original = cls.loss

    def poisoned(self, batch, info):
        out = original(self, batch, info)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(cls, "loss", poisoned)
    code, err = _run(["pretrain", "--out", str(tmp_path / "r"), *TINY, "optim.steps=4"], capsys)
    _one_line_error(code, err, "non-finite loss at step 0")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, how):
    argv = ["pretrain", "--out", str(tmp_path / "r"), *TINY, "train.device=tpu0"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("DENSESSL_DEBUG", "1")
    code, err = _run(argv, capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("densessl: error: train.device='tpu0'")


def test_a_read_only_export_target_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    config = BackboneConfig(arch="vit_tiny", depth=1, img_size=32, patch_size=16)
    torch.save(build_backbone(config).model.state_dict(), tmp_path / "dino.pth")
    target = tmp_path / "mounted-ro" / "export"
    real_mkdir = type(target).mkdir

    def read_only(self, *args, **kwargs):  # root ignores chmod: a read-only mount, patched
        if str(self).startswith(str(target.parent)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(target), "mkdir", read_only)
    code, err = _run(["export", str(tmp_path / "dino.pth"), "--out", str(target)], capsys)
    _one_line_error(code, err, "read-only file system", str(target))


# ------------------------------------------------------------------------ a full disk
class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _fill_disk_after(module, monkeypatch, calls_ok: int, room: int = 100) -> None:
    """``module.os.fdopen`` gives a full disk from its ``calls_ok + 1``-th call on."""
    real_fdopen = module.os.fdopen
    calls = {"n": 0}

    def fdopen(fd, *args, **kwargs):
        calls["n"] += 1
        handle = real_fdopen(fd, *args, **kwargs)
        return handle if calls["n"] <= calls_ok else _FullDisk(handle, room)

    monkeypatch.setattr(module.os, "fdopen", fdopen)


def test_a_full_disk_during_a_checkpoint_names_the_folder_and_keeps_last_pt(tmp_path, monkeypatch):
    """Real torch.save on a file that runs out of space: torch itself reports only
    ``[enforce fail at inline_container.cc] unexpected pos``."""
    run = tmp_path / "r"
    trainer = Trainer(tiny_config("optim.steps=6", "train.checkpoint_every=2"), run)
    _fill_disk_after(ckpt, monkeypatch, calls_ok=1)
    with pytest.raises(DiskFullError) as info:
        trainer.fit()
    message = str(info.value)
    assert message.startswith("No space left on device: cannot write last.pt into ")
    assert str(run / "checkpoints") in message and "previous last.pt is kept" in message
    assert "inline_container" not in message
    assert ckpt.load_training_state(run / "checkpoints" / "last.pt")["step"] == 2
    assert list((run / "checkpoints").glob(".*.tmp")) == []


def test_a_full_disk_is_a_one_line_cli_error(tmp_path, capsys, monkeypatch):
    _fill_disk_after(ckpt, monkeypatch, calls_ok=0)
    code, err = _run(["pretrain", "--out", str(tmp_path / "r"), *TINY, "optim.steps=2"], capsys)
    _one_line_error(code, err, "No space left on device", str(tmp_path / "r" / "checkpoints"))


def test_a_full_disk_during_an_export_names_the_folder(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from densessl.export import export_backbone

    def full(*args, **kwargs):  # safetensors' own words on a full tmpfs
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    backbone = build_backbone(BackboneConfig(arch="vit_tiny", depth=1, img_size=32))
    with pytest.raises(DiskFullError, match=r"cannot write model\.safetensors into .*export"):
        export_backbone(backbone, tmp_path / "export", verify=False)
    assert [p.name for p in (tmp_path / "export").iterdir()] == []


def test_a_full_disk_while_writing_an_eval_result_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "results" / "linear.json"
    old = {"protocol": "linear", "results": {}, "densessl_version": "0"}
    result_file.write_result(path, old)
    _fill_disk_after(result_file, monkeypatch, calls_ok=0, room=10)
    with pytest.raises(DiskFullError, match=r"cannot write the result into .*results"):
        result_file.write_result(path, {**old, "results": {"miou": 1.0}})
    assert json.loads(path.read_text()) == old
    assert [p.name for p in path.parent.iterdir()] == ["linear.json"]


_WORKER_TRACE = (
    "Caught {name} in DataLoader worker process 0.\nOriginal Traceback (most recent call "
    'last):\n  File "worker.py", line 1, in fetch\n    raise {name}(...)\n{qual}: {message}\n'
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError(_WORKER_TRACE.format(name="ImageDecodeError", message="cannot decode a.png",
                                           qual="densessl.io.decode.ImageDecodeError")),
         "cannot decode a.png"),
        (ValueError(_WORKER_TRACE.format(name="DataError", message="label b.png: ids [200]",
                                         qual="densessl.errors.DataError")),
         "label b.png: ids [200]"),
        (IndexError(_WORKER_TRACE.format(name="IndexError", message="list index out of range",
                                         qual="IndexError")), None),  # a bug: traceback
        (ZeroDivisionError("division by zero"), None),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                      "can't allocate memory: you tried to allocate 60000000000 bytes."),
         "out of memory: tried to allocate 55.9 GiB"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 ..."),
         "out of memory: tried to allocate 20.00 GiB"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/x"), "read-only file system: /mnt/x"),
        (DiskFullError("/mnt/x/last.pt"), "No space left on device: cannot write last.pt"),
    ],
)  # fmt: skip
def test_which_errors_are_user_errors(error, expected):
    from densessl.cli.errors import user_error_message

    message = user_error_message(error)
    if expected is None:
        assert message is None
    else:
        assert message is not None and message.startswith(expected), message
