"""The built wheel works outside the checkout: presets inside, one tiny pretrain, one eval.

Builds the wheel from this checkout, installs it (without dependencies: torch and the rest
come from the test environment) into a fresh folder, and runs ``python -m densessl`` from a
working directory outside the checkout with only that folder ahead on the path. The child
process asserts that ``densessl`` was imported from the installed wheel, not from ``src/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    dist = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)]
    _run([*build, "--no-build-isolation"], dist, env)
    (wheel,) = dist.glob("densessl-*.whl")
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(target), str(wheel)],
         dist, env)  # fmt: skip
    env["PYTHONPATH"] = str(target)
    return wheel, env


def test_wheel_ships_every_methods_presets(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    from densessl.methods.base import list_methods

    for name in list_methods():
        for preset in ("tiny", "paper", "smoke"):
            assert f"densessl/methods/{name}/presets/{preset}.yaml" in names
    assert "densessl/py.typed" in names
    for shipped in ("model.safetensors", "meta.json", "config.json"):  # densessl:miniature-base
        assert f"densessl/models/shipped/miniature_base/{shipped}" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_installed_wheel_pretrains_and_evaluates_outside_the_checkout(installed, tmp_path):
    _, env = installed
    where = _run([sys.executable, "-c", "import densessl; print(densessl.__file__)"], tmp_path, env)
    location = Path(where.stdout.strip()).resolve()
    assert location.is_relative_to(Path(env["PYTHONPATH"]).resolve()), location
    assert not location.is_relative_to(ROOT)

    run = tmp_path / "run"
    _run([sys.executable, "-m", "densessl", "pretrain", "--method", "dino", "--preset", "smoke",
          "--out", str(run), "train.progress=false", "train.precision=fp32"], tmp_path, env)
    assert (run / "checkpoints" / "last.pt").is_file()
    result = tmp_path / "linear.json"
    _run([sys.executable, "-m", "densessl", "eval", "linear", "--backbone", str(run),
          "--out", str(result), "--no-progress", "epochs=1", "data.num_images=20"],
         tmp_path, env)  # fmt: skip
    record = json.loads(result.read_text())
    assert record["protocol"] == "linear" and 0.0 <= record["results"]["miou"] <= 1.0
    assert "leopart" in record["source"]
