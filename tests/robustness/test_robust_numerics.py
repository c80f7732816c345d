"""Numerics: NaN/inf in the loss or the gradients stops the run, naming the step; the last
good checkpoint is kept. fp16 overflows are absorbed by the grad scaler.

Already covered elsewhere: ``tests/train/test_trainer.py``,
``test_nan_loss_stops_and_keeps_last_good_checkpoint`` (NaN total loss on CPU).
"""

from __future__ import annotations

import pytest
import torch

from densessl.io.checkpoint import load_training_state
from densessl.train.numerics import NonFiniteLossError
from densessl.train.trainer import Trainer
from helpers import robust_config


def _poison_grad_at(trainer: Trainer, step: int, value: float) -> str:
    """From ``step`` on, one weight's gradient holds ``value``; returns its name."""
    name, param = next(
        (n, p) for n, p in zip(trainer.trainable_names, trainer.trainable, strict=True)
        if "blocks.0.attn.qkv.weight" in n
    )  # fmt: skip

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if trainer.step >= step:
            grad = grad.clone()
            grad.view(-1)[0] = value
        return grad

    param.register_hook(hook)
    return name


def _last(run) -> dict:
    return load_training_state(run / "checkpoints" / "last.pt")


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_gradient_stops_naming_step_and_parameter(tmp_path, value):
    trainer = Trainer(robust_config("optim.steps=8", "train.checkpoint_every=2"), tmp_path / "r")
    name = _poison_grad_at(trainer, 5, value)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at step 5") as info:
        trainer.fit()
    assert name in str(info.value) and "loss terms were finite" in str(info.value)
    state = _last(tmp_path / "r")
    assert state["step"] == 4 and _all_finite(state)


def test_nonfinite_gradient_without_per_step_sync_is_caught_at_save(tmp_path):
    """The GPU path (no host sync per step): the first bad step is remembered on the device
    and no checkpoint is written after it."""
    trainer = Trainer(
        robust_config("optim.steps=8", "train.checkpoint_every=4", "train.log_every=4"),
        tmp_path / "r",
    )
    trainer.sync_checks = False
    _poison_grad_at(trainer, 5, float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at step 5"):
        trainer.fit()
    state = _last(tmp_path / "r")
    assert state["step"] == 4 and _all_finite(state)


def test_inf_in_one_loss_term_names_the_term(tmp_path, monkeypatch):
    trainer = Trainer(robust_config("optim.steps=6", "train.checkpoint_every=2"), tmp_path / "r")
    original = trainer.method.loss

    def poisoned(batch, info):
        out = original(batch, info)
        if info.step >= 3:
            out["dino_bad_term"] = out["loss"] * float("inf")
            out["loss"] = out["loss"] + out["dino_bad_term"]
        return out

    monkeypatch.setattr(trainer.method, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(terms: .*dino_bad"):
        trainer.fit()
    state = _last(tmp_path / "r")
    assert state["step"] == 2 and _all_finite(state)


def test_grad_scaler_skips_overflowing_step_and_continues(tmp_path):
    """fp16 needs CUDA (``train.precision=fp16`` is refused on CPU), so the scaler path is
    driven here with a CPU ``GradScaler`` and an injected overflow (inf gradient), which is
    what an fp16 overflow looks like after ``unscale_``."""
    trainer = Trainer(robust_config("optim.steps=6", "train.checkpoint_every=1"), tmp_path / "r")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    param = trainer.trainable[0]
    seen: dict[int, torch.Tensor] = {}
    original_step = trainer._train_step

    def record(batch, info):
        seen[info.step] = param.detach().clone()
        return original_step(batch, info)

    trainer._train_step = record  # type: ignore[method-assign]
    hook_steps = {3}
    param.register_hook(
        lambda g: torch.full_like(g, float("inf")) if trainer.step in hook_steps else g
    )
    trainer.fit()  # no error: the scaler absorbs the overflow
    assert torch.equal(seen[3], seen[4])  # the overflowing step was skipped ...
    assert not torch.equal(seen[2], seen[3])  # ... other steps update
    state = _last(tmp_path / "r")
    assert state["step"] == 6 and _all_finite(state)
    assert state["scaler"]["scale"] == 2.0**9  # halved once by the overflow
