"""The run directory: everything a run writes lives under ``--out``.

```
RUN/
  .densessl-run.json   marks the folder as a densessl run (written when a run starts)
  .densessl.lock       held by the running pretrain (see densessl.train.run_lock)
  config.yaml          the resolved configuration (written after a resume was checked)
  metrics.jsonl        one JSON line per log interval
  checkpoints/last.pt  latest state (exact resume); step_XXXXXXX.pt when keep_every is set
  tensorboard/         when train.tensorboard is on
```
Only the main process (rank 0) writes. ``--out`` must be missing, empty or a densessl run:
one with the marker, or (a run of an older densessl) whose ``checkpoints/last.pt`` is a
densessl checkpoint. Any other folder is refused before anything is written, unless
``allow_nonempty`` lets the run start beside its files, which densessl never overwrites
(names it would write are refused) or deletes. Only files densessl wrote are ever deleted:
the metrics of a run that never saved a checkpoint, and temp files whose names only its
atomic writers make.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from densessl import __version__
from densessl.errors import ConfigError
from densessl.io.checkpoint import load_training_state
from densessl.io.paths import user_path
from densessl.train.run_lock import LOCK_NAME, RunLock

MARKER = ".densessl-run.json"
MARKER_FORMAT = "densessl-run"
#: Names densessl writes at the top of a run directory.
OWN_NAMES = frozenset(
    {MARKER, LOCK_NAME, "config.yaml", "metrics.jsonl", "checkpoints", "tensorboard"}
)
# Temp files of the atomic writers: _write_text_atomic (root) and save_atomic (checkpoints/,
# tempfile.mkstemp's 8 characters), so that cleaning them can never hit a user's file.
_ROOT_TEMP = re.compile(r"\.(\.densessl-run\.json|config\.yaml|metrics\.jsonl)\.\d+\.tmp")
_CHECKPOINT_TEMP = re.compile(r"\.(last|step_\d{7,})\.pt\.[a-z0-9_]{8}\.tmp")

# Keys that may differ between the original run and a resumed one without changing results.
_RESUME_FREE_KEYS = {
    ("train", "progress"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "checkpoint_minutes"),
    ("train", "tensorboard"),
    ("train", "device"),
    ("data", "num_workers"),
}


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path, is_main: bool = True, allow_nonempty: bool = False) -> None:
        self.root = Path(root)
        self.is_main = is_main
        self.allow_nonempty = allow_nonempty
        self._tensorboard: Any = None
        self._lock = RunLock(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a directory for the run")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def marker_path(self) -> Path:
        return self.root / MARKER

    def has_marker(self) -> bool:
        """True when the folder carries a densessl run marker."""
        try:
            info = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and info.get("format") == MARKER_FORMAT

    def claim(self, data_path: str | None = None) -> None:
        """Check that ``--out`` may hold this run, then lock it (main process only).

        Writes nothing but the folder and its lock file, and nothing at all when refused.

        Raises:
            ConfigError: ``--out`` is inside ``data_path``, a folder that is not a densessl
                run, or in use by another ``pretrain`` (named).
            CheckpointError: a folder without the marker whose ``checkpoints/last.pt`` is
                not a densessl checkpoint.
        """
        if not self.is_main:
            return
        self.check(data_path, load=True)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--out {self.root}: cannot create the run directory: {err}") from err
        self._lock.acquire()

    def check(self, data_path: str | None = None, load: bool = False) -> None:
        """The checks of :meth:`claim` (read-only); ``load=False`` leaves the checkpoint of
        a run without the marker unread (it is loaded when the run is claimed)."""
        if self.is_main:
            self._check_outside(data_path)
            self._check_ours(load)

    def _check_outside(self, data_path: str | None) -> None:
        if data_path in (None, "scenes"):
            return
        try:
            data = Path(os.path.realpath(user_path(str(data_path))))
            out = Path(os.path.realpath(self.root))
        except (OSError, ValueError):  # e.g. a NUL character: data.path's own check says so
            return
        if out == data or data in out.parents:
            raise ConfigError(
                f"--out {self.root} is inside data.path {data_path}: the run's files (and "
                "pictures or panels written into it) would become training images of the next "
                "run or resume; put the run directory outside the image folder"
            )

    def _check_ours(self, load: bool) -> None:
        if not self.root.is_dir():
            return
        try:
            entries = sorted(
                p.name
                for p in self.root.iterdir()
                if p.name != LOCK_NAME and not _ROOT_TEMP.fullmatch(p.name)
            )
        except OSError as err:
            raise ConfigError(f"--out {self.root}: cannot list it: {err}") from err
        if not entries or self.has_marker():
            return
        if self.last_checkpoint.is_file():  # a run of a densessl without the marker
            if load:
                load_training_state(self.last_checkpoint)  # CheckpointError unless ours
            return
        clashes = [name for name in entries if name in OWN_NAMES]
        if self.allow_nonempty and not clashes:
            return
        if self.allow_nonempty:
            raise ConfigError(
                f"--out {self.root} is not a densessl run but holds {', '.join(clashes)}, "
                "which the run would overwrite; densessl never overwrites files it did not "
                "write. Give another --out"
            )
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if entries[5:] else "")
        raise ConfigError(
            f"--out {self.root} is not empty and is not a densessl run directory (it holds "
            f"{shown}; no {MARKER} marker, no checkpoints/last.pt). densessl starts runs only "
            "in a new or empty folder, so that it never overwrites or deletes files it did not "
            "write: give a new --out, or --allow-nonempty to start the run beside these files"
        )

    def prepare(self, config: dict[str, Any]) -> None:
        """Mark the folder, clean up after a killed process, write ``config.yaml`` (main
        process only; after :meth:`claim` and after a resume was checked)."""
        if not self.is_main:
            return
        writer: Any = None
        if config.get("train", {}).get("tensorboard"):  # checked before anything is written
            try:
                from torch.utils.tensorboard import SummaryWriter as writer
            except ImportError as err:
                raise ConfigError(
                    "train.tensorboard=true needs TensorBoard: pip install 'densessl[tensorboard]'"
                ) from err
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.has_marker():  # first, so a kill at any later moment leaves a marked run
            marker = {"format": MARKER_FORMAT, "format_version": 1, "created": time.time()}
            marker.update(method=config.get("method"), densessl_version=__version__)
            _write_text_atomic(self.marker_path, json.dumps(marker) + "\n")
        self.checkpoints.mkdir(exist_ok=True)
        # Temp files of writers killed before their rename: never a valid file (last.pt is
        # only ever replaced whole), named as only densessl names them, and this process
        # holds the lock, so no writer of them is alive.
        for folder, pattern in ((self.checkpoints, _CHECKPOINT_TEMP), (self.root, _ROOT_TEMP)):
            for stale in folder.iterdir():
                if pattern.fullmatch(stale.name) and stale.is_file():
                    stale.unlink(missing_ok=True)
        if not self.last_checkpoint.exists() and self.metrics_path.exists():
            self.metrics_path.unlink()  # a run that never checkpointed starts over
        _write_text_atomic(self.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if writer is not None:
            self._tensorboard = writer(str(self.root / "tensorboard"))

    def check_same_config(self, saved: dict[str, Any], current: dict[str, Any]) -> None:
        """Refuse to resume with a configuration that would change the results."""
        old, new = _flatten(saved), _flatten(current)
        differing = sorted(
            ".".join(k)
            for k in set(old) | set(new)
            if k not in _RESUME_FREE_KEYS and old.get(k) != new.get(k)
        )
        if differing:
            raise ConfigError(
                f"{self.root} holds a run with a different configuration "
                f"({', '.join(differing[:8])} differ); resuming would not be exact. Use a new "
                "--out, or start from its weights with --init "
                f"{self.last_checkpoint}"
            )

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from."""
        if not self.is_main or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill or a full disk mid-write
            if record.get("step", step + 1) <= step:
                kept.append(line)
        # Atomic: a kill while rewriting must not leave an empty or torn log.
        _write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["step"])

    def progress(self, total: int, initial: int, enabled: bool) -> Any:
        if not (self.is_main and enabled):
            return _NoProgress()
        return tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def close(self) -> None:
        """Close the TensorBoard writer and release the lock."""
        try:
            if self._tensorboard is not None:
                self._tensorboard.close()
                self._tensorboard = None
        finally:
            self._lock.release()
