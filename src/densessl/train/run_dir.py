"""The run directory: everything a run writes lives under ``--out``.

```
RUN/
  config.yaml          the resolved configuration
  metrics.jsonl        one JSON line per log interval
  checkpoints/last.pt  latest state (exact resume); step_XXXXXXX.pt when keep_every is set
  tensorboard/         when train.tensorboard is on
```
Only the main process (rank 0) writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from densessl.errors import ConfigError

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

    def __init__(self, root: Path, is_main: bool = True) -> None:
        self.root = Path(root)
        self.is_main = is_main
        self._tensorboard: Any = None
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

    def prepare(self, config: dict[str, Any]) -> None:
        """Create the folders and write ``config.yaml`` (main process only)."""
        if not self.is_main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in self.checkpoints.glob(".*.tmp"):
            # A temp file of save_atomic whose process was killed before the rename: never a
            # valid checkpoint (last.pt is only ever replaced whole), so it is safe to drop.
            stale.unlink(missing_ok=True)
        if not self.last_checkpoint.exists() and self.metrics_path.exists():
            self.metrics_path.unlink()  # a run that never checkpointed starts over
        _write_text_atomic(self.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if config.get("train", {}).get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError(
                    "train.tensorboard=true needs TensorBoard: pip install 'densessl[tensorboard]'"
                ) from err
            self._tensorboard = SummaryWriter(str(self.root / "tensorboard"))

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
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
