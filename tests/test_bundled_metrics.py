"""The bundled model cards report what `blossom-hf evaluate` reproduces from their checkpoints.

Each card's metrics.json stores the result of `blossom-hf evaluate --max-users N` made at export time; this
re-runs the same evaluation on the folder (CPU, fp32) and requires the same numbers. The full-population
numbers in the card come from the same script without --max-users (docs/RESULTS.md, model_cards/README.md).
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, SHARED_DATA

from blossom_hf.commands import evaluate as evaluate_command

CARDS = sorted(p for p in (REPO / "model_cards").glob("blossomrec-*") if (p / "metrics.json").is_file())
DATASET_FILES = {"ml-1m": "ml-1m", "beauty": "beauty", "video-games": "video-games", "ml-100k": "ml-100k"}


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_card_metrics_are_reproduced_by_evaluate(card):
    metrics = json.loads((card / "metrics.json").read_text())
    evaluation = metrics.get("evaluation") or {}
    subset = evaluation.get("subset")
    assert subset, f"{card.name}: metrics.json lacks the evaluate.py subset check (export with --evaluation-subset)"
    assert evaluation.get("splits"), f"{card.name}: card metrics were not re-computed by blossom-hf evaluate"
    preset = metrics["data"]["source"]["preset"]
    if not (SHARED_DATA / DATASET_FILES[preset]).is_dir():
        pytest.skip(f"{preset} data not present at {SHARED_DATA}")
    splits = [s for s in ("valid", "test") if s in subset]
    record = evaluate_command.run([
        "--model", str(card), "--dataset", preset, "--data-dir", str(SHARED_DATA), "--device", "cpu",
        "--attn-implementation", "sdpa", "--max-users", str(subset["max_users"]), "--no-progress",
        "--splits", *splits, "--protocols", *subset[splits[0]].keys(),
    ])
    for split in splits:
        for protocol, expected in subset[split].items():
            for name, value in expected.items():
                assert record[split][protocol][name] == pytest.approx(value, abs=1e-9), (split, protocol, name)


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_hub_folder_gets_the_package_code_at_push_time(card, tmp_path):
    """The bundled folders keep no copy of the model code (nothing to keep in sync): the Hub folder made from
    one for an upload carries the installed package's modules, verbatim, replacing any stale *.py."""
    from blossom_hf.hub import complete_hub_folder

    package = REPO / "blossom_hf" / "models" / "blossomrec"
    expected = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    source = tmp_path / "source"
    shutil.copytree(card, source, ignore=shutil.ignore_patterns("*.py"))
    (source / "modeling_blossomrec.py").write_text("raise ImportError('a stale copy')\n")
    repo = complete_hub_folder(source, tmp_path / card.name)
    assert {p.name for p in repo.glob("*.py")} == expected
    assert all((repo / name).read_bytes() == (package / name).read_bytes() for name in expected)
    artefacts = {p.name for p in card.iterdir() if p.suffix != ".py"}
    assert {p.name for p in repo.iterdir() if p.suffix != ".py"} == artefacts
