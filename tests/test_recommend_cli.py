"""scripts/recommend.py: the README's main command, titles, unknown ids, options, and the bundled checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config
from hub_testing import REPO, load_script

from blossom_hf import BlossomRecModel, ItemVocabulary
from blossom_hf.hub import export_hub_folder

MINIMAL_RECORD = {"test": {"full": {"hit@10": 0.1, "ndcg@10": 0.05, "users": 3}}, "command": ["scripts/train.py"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An exported tiny model over items 1..59 (an ML-1M-style card) and an invented movies.dat."""
    root = tmp_path_factory.mktemp("recommend")
    torch.manual_seed(0)
    model = BlossomRecModel(tiny_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.vocabulary = ItemVocabulary(list(range(1, 60)))
    folder = export_hub_folder(model, root / "blossomrec-tiny", MINIMAL_RECORD, dataset="ml-1m")
    movies = root / "movies.dat"
    lines = [f"{i}::Invented Film {i} ({1950 + i})::Drama\n" for i in range(1, 60)]
    lines[4] = "5::Caf\xe9 Society, The (1955)::Comedy\n"
    lines.append("77::Never Rated (1999)::Drama\n")
    movies.write_bytes("".join(lines).encode("latin-1"))
    return model, folder, movies


@pytest.fixture
def recommend():
    return load_script("recommend")


def test_main_command_in_a_fresh_process(setup):
    model, folder, movies = setup
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "recommend.py"), "1", "5", "12", "--k", "5", "--model", str(folder),
         "--movies", str(movies)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "History: 1 (Invented Film 1 (1951)), 5 (Café Society, The (1955)), 12 (Invented Film 12 (1962))"
    expected = model.recommend([1, 5, 12], k=5)[0]
    rows = lines[2:]
    assert len(rows) == 5
    for rank, (row, (item, score)) in enumerate(zip(rows, expected, strict=True), start=1):
        fields = row.split()
        assert fields[0] == f"{rank}." and int(fields[1]) == item
        assert float(fields[2]) == pytest.approx(score, abs=1e-3)
        assert row.endswith(f"({1950 + item})") or item == 5
    assert "Loading weights" not in proc.stderr, "no progress bars on the command line"
    assert seconds < 120, f"took {seconds:.0f} s"


def test_json_exclude_seen_and_skip(recommend, setup, capsys):
    model, folder, movies = setup
    argv = ["3", "4", "999", "--model", str(folder), "--movies", str(movies), "--k", "7", "--exclude-seen",
            "--unknown", "skip", "--json"]  # fmt: skip
    assert recommend.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    items = [r["item"] for r in out["recommendations"]]
    assert items == model.recommend([3, 4], k=7, exclude_seen=True)[0].items
    assert 3 not in items and 4 not in items
    assert [h["item"] for h in out["history"]] == ["3", "4"]
    assert out["recommendations"][0]["title"].startswith("Invented Film") or out["recommendations"][0]["item"] == 5


@pytest.mark.parametrize(
    "history,message,hint",
    [
        (["3", "999"], "unknown item id '999': not in the model's vocabulary of 59 items",
         "raw ids of the model's training data"),
        (["77"], "unknown item id '77'", "is 'Never Rated (1999)' in the catalogue, but the model never saw it"),
        (["Invented Film 12"], "unknown item id 'Invented Film 12'", "ids, not titles, are expected; did you mean 12"),
    ],
)
def test_unknown_ids_are_explained(recommend, setup, capsys, history, message, hint):
    _, folder, movies = setup
    assert recommend.main([*history, "--model", str(folder), "--movies", str(movies)]) == 2
    err = capsys.readouterr().err
    assert f"recommend.py: error: {message}" in err and hint in err


def test_default_titles_for_a_movielens_card(recommend, setup, capsys, monkeypatch):
    _, folder, movies = setup
    monkeypatch.setattr(recommend, "DEFAULT_MOVIES", movies)
    assert recommend.main(["1", "--model", str(folder), "--k", "3"]) == 0
    assert "Invented Film 1 (1951)" in capsys.readouterr().out
    assert recommend.main(["1", "--model", str(folder), "--k", "3", "--no-titles"]) == 0
    assert "Invented" not in capsys.readouterr().out


def test_bad_model_arguments(recommend, setup, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(recommend, "DEFAULT_MODEL", tmp_path / "model_cards" / "blossomrec-ml1m")
    monkeypatch.setattr(recommend, "REPO", tmp_path)
    assert recommend.main(["1"]) == 2
    err = capsys.readouterr().err
    assert "the bundled checkpoint model_cards/blossomrec-ml1m does not exist" in err and "--model" in err
    assert recommend.main(["1", "--model", str(tmp_path)]) == 2
    assert "is not a model folder (no config.json)" in capsys.readouterr().err
    assert recommend.main(["1", "--model", "./nowhere/at/all"]) == 2
    assert "neither an existing folder nor a Hub repo id" in capsys.readouterr().err
    _, folder, _ = setup
    assert recommend.main(["1", "--model", str(folder), "--k", "500"]) == 2
    assert "--k must be between 1 and 59" in capsys.readouterr().err


@pytest.mark.skipif(not (REPO / "model_cards" / "blossomrec-ml1m" / "config.json").is_file(),
                    reason="the bundled ML-1M checkpoint has not been exported yet")  # fmt: skip
def test_bundled_ml1m_checkpoint(recommend, capsys):
    assert recommend.main(["1", "1196", "260", "--k", "10", "--json", "--no-titles"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["recommendations"]) == 10 and out["model"] == "model_cards/blossomrec-ml1m"
