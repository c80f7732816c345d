"""Atomic checkpoint writes and safe loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from densessl.io.checkpoint import (
    CheckpointError,
    load_file,
    load_training_state,
    save_atomic,
)


def test_save_atomic_roundtrip_and_no_temp_left(tmp_path):
    path = save_atomic({"a": torch.arange(3)}, tmp_path / "ck" / "last.pt")
    assert torch.equal(load_file(path)["a"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_atomic({"v": torch.tensor(1)}, tmp_path / "last.pt")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_atomic({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(load_file(path)["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_file(path)


def test_not_a_training_checkpoint(tmp_path):
    path = save_atomic({"state_dict": {}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a densessl training checkpoint"):
        load_training_state(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_file(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_file(tmp_path / "text.pt")
