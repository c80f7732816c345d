"""Starting a run: claim ``--out``, check and load a checkpoint to resume, then write.

The order is what keeps a user's files safe: rank 0 first checks that ``--out`` may hold the
run and locks it (:meth:`RunDirectory.claim`); then a checkpoint in it is loaded and its
configuration compared with this run's, and only then is anything written
(:meth:`RunDirectory.prepare`: the marker, ``config.yaml``). A refused resume therefore
leaves ``config.yaml`` and the metrics as they were. In a multi-process job every process
learns whether any of them failed (one collective), so none waits forever for a process
that stopped; the failing one raises its own error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densessl.config.presets import build_run_config
from densessl.errors import ConfigError
from densessl.io.checkpoint import entries_fit, load_training_state, restore_rng_state
from densessl.ops.distributed import agree_any, scatter_buffers

if TYPE_CHECKING:
    from densessl.train.trainer import Trainer

__all__ = ["resume", "start_run"]


def start_run(trainer: Trainer) -> None:
    """Claim the run directory, resume from ``checkpoints/last.pt`` if there is one, write.

    Raises:
        ConfigError / CheckpointError: the directory is refused or in use, or the checkpoint
            does not fit this run; nothing was written then (but the lock file). The lock is
            released again on any error.
    """
    run_dir = trainer.run_dir
    error: Exception | None = None
    try:
        run_dir.claim(trainer.config.data.path)
        if run_dir.last_checkpoint.is_file():
            resume(trainer)
        run_dir.prepare(trainer.config.to_dict())
    except Exception as err:
        error = err
    except BaseException:  # Ctrl-C while starting: nothing to agree on, just let go
        run_dir.close()
        raise
    failed = error is not None
    if trainer.world_size > 1:
        (failed,) = agree_any([failed], trainer.device)
    if error is not None:
        run_dir.close()
        raise error
    if failed:
        run_dir.close()
        raise ConfigError(
            f"another process of this job could not start the run in {run_dir.root} (its "
            "error says why); stopping this one too"
        )


def resume(trainer: Trainer) -> None:
    """Load ``last.pt`` into the trainer after checking that its config matches the run's."""
    path = trainer.run_dir.last_checkpoint
    state = load_training_state(path)
    current = trainer.config.to_dict()
    trainer.run_dir.check_same_config(_saved_config(trainer, state["config"]), current)
    with entries_fit(path):  # wrong shapes or keys: CheckpointError naming the file
        trainer.method.load_state_dict(state["model"])
        try:
            scatter_buffers(trainer.method, state.get("rank_local") or {})
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from err
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
    trainer.step = int(state["step"])
    trainer.run_dir.truncate_metrics(trainer.step)


def _saved_config(trainer: Trainer, saved: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's config with today's defaults for keys it predates, so a run saved
    before an option existed resumes when that option is left at its default."""
    config = trainer.config
    try:
        full = build_run_config(config.method, type(config.params), None, saved)
    except ConfigError:
        return saved  # a key that no longer exists: compared as saved, and reported
    return full.to_dict()
