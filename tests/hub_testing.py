"""Helpers shared by test_hub.py, test_finetune.py and test_recommend_cli.py: a tiny real training run on
generated data, the bundled checkpoints (as artefacts, and as temporary Hub folders with the package's code),
the scripts as modules, and a subprocess that loads a checkpoint (optionally without blossom_hf importable)
and recomputes its sample_scores.json."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

from conftest import thread_env

REPO = Path(__file__).resolve().parents[1]
MODEL_CARDS = REPO / "model_cards"
USER_PREFIX = "visitor-zq"  # distinctive, so a test can assert that no user id leaks into an export


def bundled_checkpoints() -> list[Path]:
    """Every bundled checkpoint: model_cards/*/ and the ML-1M one shipped in the package (model_cards/blossomrec-ml1m
    links to it), each once. They hold artefacts only; :func:`hub_folder` adds the code."""
    from blossom_hf.hub import BUNDLED_ML1M

    found = {BUNDLED_ML1M.resolve(): BUNDLED_ML1M} if (BUNDLED_ML1M / "config.json").is_file() else {}
    if MODEL_CARDS.is_dir():
        for path in MODEL_CARDS.iterdir():
            if path.is_dir() and (path / "config.json").is_file():
                found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=lambda p: p.name)


def hub_folder(folder: Path, tmp: Path) -> Path:
    """A temporary Hub repo folder of a bundled checkpoint: its artefacts plus the package's model code."""
    from blossom_hf.hub import complete_hub_folder

    return complete_hub_folder(folder, tmp / folder.name)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (so its ``main(argv)`` runs in-process)."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"blossom_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_interactions(path: Path, n_users: int = 40, items: list | None = None, seed: int = 0) -> Path:
    """A generated CSV log (user,item,ts) with some sequential signal: users walk through the item list."""
    rng = random.Random(seed)
    items = items if items is not None else list(range(1, 121))
    lines = ["user,item,ts"]
    for user in range(n_users):
        position = rng.randrange(len(items))
        for t in range(rng.randint(5, 14)):
            position = (position + rng.choice((1, 1, 2, 3))) % len(items)
            lines.append(f"{USER_PREFIX}{user:03d},{items[position]},{1000 + t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_training_run(output_dir: Path, csv_path: Path, epochs: int = 1, **config_overrides):
    """Train a tiny BlossomRec with ``run_training`` on the CPU; returns ``(model, record)``."""
    import torch
    from conftest import tiny_config

    from blossom_hf import BlossomRecModel
    from blossom_hf.data import DataSpec
    from blossom_hf.training import RecTrainingConfig, default_training_arguments, run_training

    data = DataSpec(path=str(csv_path), format="csv", user_col="user", item_col="item", time_col="ts").load()
    torch.manual_seed(0)
    model = BlossomRecModel(tiny_config(vocab_size=data.n_items + 1, max_history_length=16, **config_overrides))
    rec = RecTrainingConfig(patience=2, eval_batch_size=64)
    args = default_training_arguments(
        output_dir, rec, num_train_epochs=epochs, per_device_train_batch_size=16, use_cpu=True,
        disable_tqdm=True, bf16=False, dataloader_pin_memory=False, save_total_limit=1,
    )  # fmt: skip
    command = ["blossom-hf", "train", "--dataset", str(csv_path)]
    record = run_training(data, model, output_dir, rec, args, command=command)
    return model, record


LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    modes, jobs = sys.argv[1].split(","), json.loads(sys.argv[2])

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "blossom_hf" or name.startswith("blossom_hf."):
                raise ImportError("blossom_hf must not be importable in this test")

    results = [{} for _ in jobs]
    for mode in modes:
        if mode == "remote":
            assert "blossom_hf" not in sys.modules, "remote must come before library"
            sys.meta_path.insert(0, Block())
        else:
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, Block)]
            import blossom_hf
        from transformers import AutoModel
        for (source, samples_path), result in zip(jobs, results):
            samples = json.load(open(samples_path))
            model = AutoModel.from_pretrained(source, trust_remote_code=(mode == "remote"))
            recs = model.recommend([s["history"] for s in samples["samples"]], k=samples["k"])
            result[mode] = {
                "module": type(model).__module__,
                "items": [r.items for r in recs],
                "scores": [r.scores for r in recs],
                "blossom_hf_imported": any(m == "blossom_hf" or m.startswith("blossom_hf.") for m in sys.modules),
            }
    print("RESULT" + json.dumps(results))
    """
)


def run_loader(modes: str, source: str, samples_path: Path, hf_home: Path, **env: str) -> dict:
    """Load ``source`` in a fresh interpreter and return, per mode, its recommendations for the sample histories.

    ``modes``: comma-separated, in order: "remote" (trust_remote_code, blossom_hf not importable) and/or
    "library" (``import blossom_hf``, no remote code).
    """
    return run_loaders(modes, [(source, samples_path)], hf_home, **env)[0]


def run_loaders(modes: str, jobs: list[tuple[str, Path]], hf_home: Path, **env: str) -> list[dict]:
    """:func:`run_loader` for several ``(source, samples_path)`` in one fresh interpreter (one start-up, the
    costly part): every source is loaded in each mode, all of them "remote" first."""
    environment = {"HF_HOME": str(hf_home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **thread_env(),
                   "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}  # fmt: skip
    argv = [modes, json.dumps([[str(source), str(samples)] for source, samples in jobs])]
    proc = subprocess.run([sys.executable, "-c", LOADER, *argv], capture_output=True, text=True, env=environment,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"loader failed ({modes}, {[source for source, _ in jobs]}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.split("RESULT", 1)[1])
