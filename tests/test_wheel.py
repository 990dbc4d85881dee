"""The built wheel works without a checkout: `blossom-hf train` on a generated CSV and README's first command, run
in one fresh interpreter from a folder outside the repository with only the unpacked wheel importable as
blossom_hf."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from hub_testing import write_interactions


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_wheel_console_command_trains_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a clean copy, so the build leaves nothing in the worktree
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "blossom_hf", source / "blossom_hf", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BLOSSOM_DATA_DIR")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(source)], tmp_path, env)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("blossom_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "blossom-hf = blossom_hf.cli:main" in entry_points
    assert "blossom_hf/__main__.py" in names and "blossom_hf/commands/train.py" in names
    assert "Root-Is-Purelib: true" in archive_text(wheel, ".dist-info/WHEEL"), "a pure-Python wheel"
    site = tmp_path / "site"  # installing a pure-Python wheel is unpacking it (pip adds only the console script)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)

    work = tmp_path / "elsewhere"  # not the repository: the checkout is not importable from here
    work.mkdir()
    env["PYTHONPATH"] = str(site)
    log = write_interactions(work / "log.csv", n_users=30, items=list(range(1, 31)))
    train = ["train", "--dataset", str(log), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
             "--epochs", "1", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
             "--intermediate-size", "16", "--max-history-length", "12", "--batch-size", "16", "--no-progress",
             "--eval-protocols", "full", "uni10", "--output-dir", "run"]  # fmt: skip
    # the console script's target (entry_points.txt above), as the command line runs it: train, then README's
    # first command (the bundled ML-1M checkpoint, shipped inside the wheel)
    script = ("import sys, importlib.util, json; print('ORIGIN', importlib.util.find_spec('blossom_hf').origin); "
              "from blossom_hf.cli import main; args = json.loads(sys.argv[1]); "
              "status = main(args[0]); print('SPLIT', flush=True); sys.exit(status or main(args[1]))")
    result = _run([sys.executable, "-c", script, json.dumps([train, ["recommend", "1", "1196", "260"]])], work, env)
    before, recommended = result.stdout.split("SPLIT\n", 1)
    where = before.split("ORIGIN ", 1)[1].splitlines()[0]
    assert Path(where.strip()).is_relative_to(site), f"blossom_hf imported from {where} instead of the wheel"
    assert (work / "run" / "metrics.json").is_file() and (work / "run" / "best_model" / "config.json").is_file()
    # (a bad-input run's one-line error is the same cli.main as here: tests/test_cli.py checks it in-process)

    assert any(n.endswith("checkpoints/blossomrec-ml1m/model.safetensors") for n in names)
    assert wheel.stat().st_size < 15_000_000, f"the wheel is {wheel.stat().st_size / 1e6:.1f} MB"
    lines = recommended.strip().splitlines()
    assert lines[0] == "History: 1, 1196, 260" and lines[1].startswith("Top 10 from bundled:blossomrec-ml1m")
    assert len(lines) == 12 and lines[2].split()[0] == "1." and int(lines[2].split()[1]) > 0
    assert "Loading weights" not in result.stderr, "no progress bars on the command line"


def archive_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return next(archive.read(n).decode() for n in archive.namelist() if n.endswith(suffix))
