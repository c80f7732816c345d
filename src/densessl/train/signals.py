"""Stopping a training run on a signal: SIGINT (Ctrl-C) and SIGTERM (SLURM, Docker, Kubernetes).

While :class:`StopSignals` is active, a handler only records the signal; the trainer stops at
the next step boundary (in a multi-process job all processes agree at the next log step),
writes a checkpoint and raises :class:`TrainingInterrupted`. The CLI turns that into exit
status 128 + the signal number: **130** for SIGINT, **143** for SIGTERM ("interrupted,
resumable": running the same command again resumes exactly). A run that reached its last
step when the signal came ends normally (exit 0).

Repeated signals change nothing (SLURM signals every process of a step and torchrun forwards
the signal again, so a worker may see it twice); SIGKILL stops at once and ``last.pt`` stays
the last checkpoint written. DataLoader workers ignore both signals
(:func:`ignore_stop_signals`, their ``worker_init_fn``): a signal sent to a whole process
group (a terminal's Ctrl-C, torchrun's ``killpg``, SLURM) must not kill the workers the
main process still needs to reach the checkpoint. The trainer shuts them down itself
(:func:`close_workers`) when its loop ends, normally or by an error: persistent workers that
ignore the stop signals would otherwise keep a failed process from exiting.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = [
    "STOP_SIGNALS",
    "StopSignals",
    "TrainingInterrupted",
    "close_workers",
    "exit_code",
    "ignore_stop_signals",
]

#: The signals that stop training with a checkpoint, in order of precedence when processes
#: of one job saw different ones (the scheduler's SIGTERM wins).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; the same command resumes.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: the step of the checkpoint written.
        checkpoint: its path.
        exit_code: 130 (SIGINT) or 143 (SIGTERM): the CLI's exit status.
        is_main: raised on the main process (rank 0), the one that reports it.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path, is_main: bool = True) -> None:
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = exit_code(signum)
        self.is_main = is_main
        name = signal.Signals(self.signum).name
        super().__init__(
            f"interrupted by {name} at step {step}; checkpoint saved to {checkpoint}. Run "
            f"the same command again to resume (exit status {self.exit_code})"
        )


class StopSignals:
    """Context manager: SIGINT and SIGTERM are recorded (``received``) instead of acting.

    Installed only from the main thread (elsewhere Python refuses signal handlers; the
    signals then keep their previous behaviour); the previous handlers return on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal seen by this process
        self.agreed: int | None = None  # the signal all processes stop for
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.received = self.agreed = None
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._record)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            # None: a handler installed outside Python; the default is the closest we can do.
            restored = signal.SIG_DFL if previous is None else previous
            signal.signal(signum, restored)  # type: ignore[arg-type]
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def flags(self) -> list[bool]:
        """One boolean per :data:`STOP_SIGNALS` entry: was it received here (for an OR over
        processes)."""
        return [self.received == s for s in STOP_SIGNALS]

    def agree(self, flags: list[bool] | None = None) -> bool:
        """Settle the signal to stop for: this process's own (``flags=None``, one process) or
        the first of :data:`STOP_SIGNALS` that any process saw (``flags``: the OR over
        processes of :meth:`flags`). Returns whether to stop."""
        if flags is None:
            self.agreed = self.received
        else:
            self.agreed = next((s for s, f in zip(STOP_SIGNALS, flags, strict=True) if f), None)
        return self.agreed is not None

    def interrupted(self, step: int, checkpoint: Path, is_main: bool) -> TrainingInterrupted:
        """The error to raise after the checkpoint of ``step`` was written."""
        assert self.agreed is not None
        return TrainingInterrupted(self.agreed, step, checkpoint, is_main)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: SIGINT and SIGTERM are ignored in the worker."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def close_workers(loader: DataLoader) -> None:
    """Shut down ``loader``'s worker processes now (persistent workers live as long as the
    loader's iterator, which a traceback can keep alive); a later iteration starts new ones."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None
