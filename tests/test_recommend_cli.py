"""`blossom-hf recommend` (blossom_hf.commands.recommend): the README's main command, titles, unknown ids,
options, load reports of damaged checkpoints, and the bundled (package data) checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from blossom_hf import BlossomRecModel, ItemVocabulary
from blossom_hf.commands import recommend
from blossom_hf.errors import BlossomUserError
from blossom_hf.hub import BUNDLED_ML1M, export_hub_folder

MINIMAL_RECORD = {"test": {"full": {"hit@10": 0.1, "ndcg@10": 0.05, "users": 3}}, "command": ["blossom-hf", "train"]}


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


def test_main_command_prints_titles_and_scores(setup, capsys):
    """The human-readable output (a fresh process of the installed command, without progress bars on stderr:
    tests/test_wheel.py)."""
    model, folder, movies = setup
    assert recommend.main(["1", "5", "12", "--k", "5", "--model", str(folder), "--titles", str(movies)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "History: 1 (Invented Film 1 (1951)), 5 (Café Society, The (1955)), 12 (Invented Film 12 (1962))"
    expected = model.recommend([1, 5, 12], k=5)[0]
    rows = lines[2:]
    assert len(rows) == 5
    for rank, (row, (item, score)) in enumerate(zip(rows, expected, strict=True), start=1):
        fields = row.split()
        assert fields[0] == f"{rank}." and int(fields[1]) == item
        assert float(fields[2]) == pytest.approx(score, abs=1e-3)
        assert row.endswith(f"({1950 + item})") or item == 5


def test_json_exclude_seen_and_skip(setup, capsys):
    model, folder, movies = setup
    argv = ["3", "4", "999", "--model", str(folder), "--titles", str(movies), "--k", "7", "--exclude-seen",
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
def test_unknown_ids_are_explained(setup, history, message, hint):
    _, folder, movies = setup
    with pytest.raises(BlossomUserError) as caught:
        recommend.main([*history, "--model", str(folder), "--titles", str(movies)])
    text = str(caught.value)
    assert message in text and hint in text and "\n" not in text, "one line: the problem and the fix"


def test_titles_only_when_asked(setup, capsys, tmp_path):
    _, folder, movies = setup
    assert recommend.main(["1", "--model", str(folder), "--k", "3"]) == 0
    assert "Invented" not in capsys.readouterr().out, "no default catalogue path"
    assert recommend.main(["1", "--model", str(folder), "--k", "3", "--titles", str(movies)]) == 0
    assert "Invented Film" in capsys.readouterr().out
    header_only = tmp_path / "titles.csv"
    header_only.write_text("item_id,title\n")
    with pytest.raises(BlossomUserError, match="holds no items \\(only a header\\)"):
        recommend.main(["1", "--model", str(folder), "--titles", str(header_only)])


def test_bad_model_arguments(setup, monkeypatch, tmp_path):
    monkeypatch.setattr(recommend, "BUNDLED_ML1M", tmp_path / "site-packages" / "blossomrec-ml1m")
    with pytest.raises(FileNotFoundError, match="the bundled checkpoint is missing from the installed package"):
        recommend.main(["1"])
    with pytest.raises(BlossomUserError, match="is not a model folder \\(no config.json\\)"):
        recommend.main(["1", "--model", str(tmp_path)])
    with pytest.raises(BlossomUserError, match="neither an existing folder nor a Hub repo id"):
        recommend.main(["1", "--model", "./nowhere/at/all"])
    _, folder, _ = setup
    with pytest.raises(BlossomUserError, match="--k must be between 1 and 59"):
        recommend.main(["1", "--model", str(folder), "--k", "500"])


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_weights_that_do_not_fit_the_model_are_refused(setup, tmp_path, damage):
    """A checkpoint missing a tensor (random weights) or holding tensors its config does not use (blossom weights
    under attention_type=full) is an error, not silent wrong recommendations."""
    _, folder, _ = setup
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    if damage == "missing":
        tensors = load_file(broken / "model.safetensors")
        dropped = next(name for name in tensors if name.startswith("layers.0."))
        del tensors[dropped]
        save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    else:
        config = json.loads((broken / "config.json").read_text())
        config["attention_type"] = "full"
        (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(BlossomUserError) as caught:
        recommend.main(["1", "2", "--model", str(broken)])
    text = str(caught.value)
    ours = "the weights lack 1 tensor(s)" if damage == "missing" else "tensor(s) the config's model does not use"
    assert "\n" not in text and (ours in text or text.startswith(f"cannot load the model {broken}")), text


@pytest.mark.skipif(not (BUNDLED_ML1M / "config.json").is_file(), reason="the bundled ML-1M checkpoint is missing")
def test_bundled_ml1m_checkpoint_is_the_default(capsys):
    assert recommend.main(["1", "1196", "260", "--k", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["recommendations"]) == 10 and out["model"] == "bundled:blossomrec-ml1m"
    samples = json.loads((BUNDLED_ML1M / "sample_scores.json").read_text())
    first = next(s for s in samples["samples"] if s["history"] == [1, 1196, 260])
    assert [r["item"] for r in out["recommendations"]] == first["items"]


def test_no_script_path_remains():
    """The user commands live in the package (blossom-hf ...), not in scripts/ of a checkout."""
    from hub_testing import REPO

    for name in ("recommend", "export_checkpoint", "push_to_hub", "build_title_mapping"):
        assert not (REPO / "scripts" / f"{name}.py").exists(), name
    for module in ("recommend", "export", "push"):
        command = __import__(f"blossom_hf.commands.{module}", fromlist=["HELP", "main"])
        assert isinstance(command.HELP, str) and "\n" not in command.HELP and callable(command.main)
