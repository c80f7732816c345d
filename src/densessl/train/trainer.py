"""The training loop, generic over methods.

Per step: set the schedules (lr, weight decay, teacher momentum), compute the method's loss
under autocast, backprop, clip each gradient tensor on its own (DINO's clipping), drop the
``last_layer`` gradients during the first epoch(s), step AdamW, update the EMA teacher.
Host syncs happen only at log intervals and checkpoints. Everything needed for an exact
resume is saved atomically; giving the same ``out`` again resumes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from densessl import __version__
from densessl.config.presets import build_run_config
from densessl.config.schema import RunConfig
from densessl.data.sampler import ResumableSampler, step_seed
from densessl.data.sources import build_pretrain_images
from densessl.data.views.multicrop import MultiCropDataset, batch_to_device, collate_views
from densessl.errors import ConfigError
from densessl.io.checkpoint import (
    save_atomic,
    training_state,
)
from densessl.methods.base import Method, StepInfo, get_method
from densessl.ops.distributed import (
    agree_any,
    all_reduce_mean,
    gather_buffers,
    init_from_env,
    wrap_ddp,
)
from densessl.ops.schedules import cosine, warmup_cosine
from densessl.train.compile import compile_backbones
from densessl.train.numerics import (
    NonFiniteLossError,
    clip_gradients_per_parameter,
    nonfinite_gradient_error,
    nonfinite_loss_error,
)
from densessl.train.precision import autocast, resolve_device, resolve_precision
from densessl.train.run_dir import RunDirectory
from densessl.train.signals import StopSignals, close_workers, ignore_stop_signals
from densessl.train.startup import start_run
from densessl.train.warm_start import warm_start

__all__ = ["NonFiniteLossError", "Trainer", "pretrain", "read_metrics"]


class Trainer:
    """Runs one pretraining job into a run directory (see :class:`RunDirectory`)."""

    def __init__(
        self,
        config: RunConfig,
        out: Path | str,
        init: str | None = None,
        allow_nonempty: bool = False,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.train.device)
        self.rank, self.world_size = init_from_env(self.device)
        self.is_main = self.rank == 0
        self.run_dir = RunDirectory(Path(out), self.is_main, allow_nonempty)
        self.run_dir.check(config.data.path)  # a folder that is not a run: refused at once
        try:
            self.autocast_dtype, use_scaler = resolve_precision(config.train.precision, self.device)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.init = init
        self._stop_requested = False
        self._signals = StopSignals()  # SIGINT / SIGTERM: checkpoint, then stop
        self._stop_at: int | None = None

        torch.manual_seed(config.train.seed)
        method_cls = get_method(config.method)
        try:
            self.method: Method = method_cls(config.params, config.backbone, config.views)
        except ValueError as err:  # the method's own consistency checks (grid sizes, ...)
            raise ConfigError(f"{config.method}: {err}") from err
        if init:
            warm_start(self.method, init)
        self.method.to(self.device)
        if config.train.compile:
            compile_backbones(self.method)
        self.model = wrap_ddp(self.method, self.device)  # the method itself with 1 process
        self.groups = self.method.param_groups(config.optim.weight_decay)
        self.optimizer = torch.optim.AdamW(self.groups, lr=0.0, betas=config.optim.betas)
        self.last_layer_params = [
            p
            for g in self.groups
            for n, p in zip(g["names"], g["params"], strict=True)
            if "last_layer" in n
        ]
        self.trainable = [p for g in self.groups for p in g["params"]]
        self.trainable_names = [n for g in self.groups for n in g["names"]]
        # NaN/inf checks: every step on CPU (a host sync is free there); on GPUs only at log
        # and checkpoint time, from a flag kept on the device (no per-step sync).
        self.sync_checks = self.device.type == "cpu"
        self._first_bad_grad_step = torch.full((), -1, dtype=torch.long, device=self.device)

        images = build_pretrain_images(config.data)
        views = self.method.build_views(config.views)
        self.dataset = MultiCropDataset(images, views, config.train.seed)
        global_batch = config.data.batch_size * self.world_size
        self.global_batch = global_batch
        self.sampler = ResumableSampler(
            len(self.dataset), global_batch, config.train.seed, self.rank, self.world_size
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {len(self.dataset)} images is fewer than one global batch "
                f"({global_batch}); lower data.batch_size or add images"
            )
        optim = config.optim
        self.total_steps = optim.steps or optim.epochs * self.steps_per_epoch
        self.warmup_steps = round(optim.warmup_epochs * self.steps_per_epoch)
        scale = global_batch / 256 if optim.scale_lr_with_batch else 1.0
        self.peak_lr = optim.lr * scale
        self.min_lr = optim.min_lr
        self.step = 0

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rank_local = gather_buffers(self.method, self.method.rank_local_buffers())  # collective
        state = training_state(
            step=self.step,
            method=self.method,
            optimizer=self.optimizer,
            scaler=self.scaler,
            config=self.config.to_dict(),
            backbone_state=self.method.teacher_backbone().state_dict(),
            version=__version__,
        )
        state["rank_local"] = rank_local
        return state

    def save(self) -> None:
        """Write ``last.pt`` (and a kept copy) on rank 0; every process must call it."""
        state = self._state()
        if self.is_main:
            save_atomic(state, self.run_dir.last_checkpoint)
            keep = self.config.train.keep_every
            if keep and self.step % keep == 0:
                save_atomic(state, self.run_dir.step_checkpoint(self.step))

    # -- loop ------------------------------------------------------------------------------
    def _set_schedules(self) -> dict[str, float]:
        optim = self.config.optim
        lr = warmup_cosine(
            self.step, self.total_steps, self.peak_lr, self.min_lr, self.warmup_steps,
            rule=optim.warmup_rule,
        )  # fmt: skip
        wd = cosine(self.step, self.total_steps, optim.weight_decay, optim.weight_decay_end)
        momentum = cosine(
            self.step, self.total_steps, optim.momentum_teacher, optim.momentum_teacher_end
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
            if group["apply_wd"]:
                group["weight_decay"] = wd
        return {"lr": lr, "wd": wd, "momentum": momentum}

    def _train_step(self, batch: dict[str, Any], info: StepInfo) -> dict[str, torch.Tensor]:
        schedules = self._set_schedules()
        # The global RNG (drop-path, anything not keyed by sample) restarts from
        # (seed, step, rank) every step: exact on resume, different on every process.
        torch.manual_seed(step_seed(self.config.train.seed, self.step, self.rank))
        with autocast(self.device, self.autocast_dtype):
            out = self.model(batch, info)
        loss = out["loss"]
        if self.sync_checks and not bool(torch.isfinite(loss)):
            self._raise_nonfinite(out)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norms = clip_gradients_per_parameter(self.trainable, self.config.optim.clip_grad)
        if self.scaler is None and norms:
            # With a grad scaler (fp16) inf/NaN gradients are expected overflows: the scaler
            # skips that step and lowers its scale. Without one they are an error.
            finite = torch.stack(norms).isfinite().all()
            if self.sync_checks:
                if not bool(finite):
                    self._raise_nonfinite_gradients(norms, out)
            else:
                bad = self._first_bad_grad_step
                bad.copy_(torch.where((bad < 0) & ~finite, self.step, bad))
        if info.epoch < self.config.optim.freeze_last_layer:
            for param in self.last_layer_params:
                param.grad = None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.method.update_teacher(schedules["momentum"])
        self.method.after_step(batch, info)
        logged = {k: v.detach().float() for k, v in out.items() if v.dim() == 0}
        logged.update({k: torch.tensor(v) for k, v in schedules.items()})
        return logged

    def _raise_nonfinite(self, out: dict[str, torch.Tensor]) -> None:
        raise nonfinite_loss_error(self.step, out, self.run_dir.last_checkpoint)

    def _raise_nonfinite_gradients(
        self, norms: list[torch.Tensor] | None, out: dict[str, torch.Tensor] | None
    ) -> None:
        step = self.step if norms is not None else int(self._first_bad_grad_step)
        named = None
        if norms is not None:
            with_grad = [n for n, p in zip(self.trainable_names, self.trainable, strict=True)
                         if p.grad is not None]  # fmt: skip
            named = dict(zip(with_grad, norms, strict=True))
        raise nonfinite_gradient_error(step, named, out, self.run_dir.last_checkpoint)

    def fit(self, stop_at: int | None = None) -> Path:
        """Train to ``total_steps`` (resuming if the run directory has a checkpoint).

        ``stop_at`` ends the process early at that step with a checkpoint, as a preemption
        would (the schedules still follow ``total_steps``); running again resumes.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM came before the last step; a checkpoint
                was written at the next step boundary (:mod:`densessl.train.signals`).
        """
        self._stop_at = stop_at
        start_run(self)  # lock --out, check and load a checkpoint, only then write
        try:  # every process: torchrun forwards Ctrl-C and SIGTERM to all of them
            with self._signals:
                self._loop()
        finally:
            self.run_dir.close()  # also releases the lock of the run directory
        return self.run_dir.root

    def make_loader(self) -> DataLoader:
        """The training DataLoader: resumable sampler, pinned memory on CUDA, persistent workers."""
        workers = self.config.data.num_workers
        return DataLoader(
            self.dataset,
            batch_size=self.config.data.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.config.train.seed),
            worker_init_fn=ignore_stop_signals,  # the main process decides when to stop
        )

    def _loop(self) -> None:
        loader = self.make_loader()
        try:
            self._steps(loader)
        finally:  # an error must not leave persistent workers waiting (the process hangs)
            close_workers(loader)

    def _steps(self, loader: DataLoader) -> None:
        cfg = self.config
        progress = self.run_dir.progress(self.total_steps, self.step, cfg.train.progress)
        sums: dict[str, torch.Tensor] = {}
        count, wait, interval_start = 0, 0.0, time.perf_counter()
        last_save = time.monotonic()
        while self.step < self.total_steps and not self._stop_requested:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, offset)
            fetch_start = time.perf_counter()
            for batch in loader:
                wait += time.perf_counter() - fetch_start
                info = StepInfo(self.step, self.total_steps, self.steps_per_epoch)
                logged = self._train_step(batch_to_device(batch, self.device), info)
                for key, value in logged.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                self.step += 1
                progress.update(1)
                done = self.step >= self.total_steps
                if self._stop_at is not None and self.step >= self._stop_at:
                    self._stop_requested = True
                minutes = (time.monotonic() - last_save) / 60
                timed_save = minutes >= cfg.train.checkpoint_minutes
                if self.world_size == 1:
                    self._stop_requested |= self._signals.agree()
                elif self.step % cfg.train.log_every == 0:
                    # Signals and clocks are per process: decide together at log steps.
                    *stop, timed_save = agree_any([*self._signals.flags(), timed_save], self.device)
                    self._stop_requested |= self._signals.agree(stop)
                else:
                    timed_save = False
                if self.step % cfg.train.log_every == 0 or done or self._stop_requested:
                    elapsed = time.perf_counter() - interval_start
                    record = self._log(sums, count, elapsed, wait, epoch)
                    progress.set_postfix(
                        loss=f"{record['loss']:.4f}", img_s=f"{record['img_s']:.1f}"
                    )
                    sums, count, wait, interval_start = {}, 0, 0.0, time.perf_counter()
                if (
                    done
                    or self._stop_requested
                    or self.step % cfg.train.checkpoint_every == 0
                    or timed_save
                    or (cfg.train.keep_every and self.step % cfg.train.keep_every == 0)
                ):
                    self._check_finite(sums)
                    self.save()
                    last_save = time.monotonic()
                if done or self._stop_requested or self.step % self.steps_per_epoch == 0:
                    break
                fetch_start = time.perf_counter()
        progress.close()
        if self._signals.agreed is not None and self.step < self.total_steps:
            raise self._signals.interrupted(self.step, self.run_dir.last_checkpoint, self.is_main)

    def _check_finite(self, sums: dict[str, torch.Tensor]) -> None:
        """Never write a checkpoint after a non-finite loss or gradient (one host sync)."""
        if int(self._first_bad_grad_step) >= 0:  # first: a bad gradient makes later losses NaN
            self._raise_nonfinite_gradients(None, None)
        if "loss" in sums and not bool(torch.isfinite(sums["loss"])):
            self._raise_nonfinite(sums)

    def _log(
        self, sums: dict[str, torch.Tensor], count: int, elapsed: float, wait: float, epoch: int
    ) -> dict[str, float]:
        keys = sorted(sums)
        stacked = torch.stack([sums[k].float().to(self.device) for k in keys]).div(count)
        if self.world_size > 1:  # the mean over processes (one collective per log line)
            all_reduce_mean(stacked)
        values = stacked.cpu().tolist()
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
        }
        record.update(dict(zip(keys, values, strict=True)))
        if int(self._first_bad_grad_step) >= 0:
            self._raise_nonfinite_gradients(None, None)
        if not math.isfinite(record.get("loss", 0.0)):
            self._raise_nonfinite({k: sums[k] for k in keys})
        record["img_s"] = self.global_batch * count / max(elapsed, 1e-9)
        record["data_wait"] = wait / max(elapsed, 1e-9)
        self.run_dir.log(record)
        return record


def pretrain(
    method: str = "dino",
    data: str | None = None,
    out: str | Path = "runs/dino",
    preset: str | None = "tiny",
    steps: int | None = None,
    epochs: int | None = None,
    init: str | None = None,
    overrides: list[str] | None = None,
    allow_nonempty: bool = False,
) -> Path:
    """Pretrain ``method`` on ``data`` into the run directory ``out`` (same as the CLI).

    Args:
        method: a registered method name (``densessl methods`` lists them).
        data: a folder of images, ``"scenes"``, or None for generated synthetic scenes.
        out: run directory. If it holds a checkpoint the run resumes exactly.
        preset: a preset shipped with the method (``tiny``, ``paper``, ``smoke``) or a YAML path.
        steps / epochs: training length (steps wins).
        init: warm-start weights (a densessl run/checkpoint or an official DINO checkpoint).
        overrides: ``key=value`` strings, e.g. ``["optim.lr=1e-3", "dino.out_dim=1024"]``.
        allow_nonempty: start a new run in a non-empty folder that is not a densessl run
            (its files are never overwritten or deleted; names the run writes are refused).

    Returns:
        The run directory.
    """
    items = list(overrides or [])
    if data is not None:
        items.append(f"data.path={data}")
    if steps is not None:
        items.append(f"optim.steps={steps}")
    if epochs is not None:
        items += [f"optim.epochs={epochs}", "optim.steps=null"]
    params_cls = get_method(method).Params
    config = build_run_config(method, params_cls, preset, items)
    return Trainer(config, out, init=init, allow_nonempty=allow_nonempty).fit()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` records of a run directory."""
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
