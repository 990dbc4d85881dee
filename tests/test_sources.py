"""Interactions from a pandas.DataFrame, a datasets.Dataset, a local data folder, a Hub dataset id and an hf:// path:
the user's column names, the same checks and the same preprocessing result as the equivalent file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from hub_server import LocalHub, olah_missing_reason

from blossom_hf.data import (
    MalformedLineError,
    PreprocessingConfig,
    UnknownColumnError,
    from_dataset,
    from_pandas,
    load_interactions,
    preprocess,
)
from blossom_hf.data import sources as sources_module
from blossom_hf.data.errors import InteractionDataError

datasets.disable_progress_bars()
REPO = Path(__file__).resolve().parents[1]

# shuffled rows, a time tie (u2 at t=50: file order decides), string users, integer items
ROWS = [("u2", 30, 50), ("u1", 10, 1), ("u1", 20, 5), ("u2", 10, 50), ("u3", 20, 7), ("u1", 30, 9), ("u3", 10, 8)]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["customer", "sku", "ts"])


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "logs.csv"
    _frame().to_csv(path, index=False)
    return path


def _same(a, b) -> None:
    assert a.user_ids.to_pylist() == b.user_ids.to_pylist() and a.item_ids == b.item_ids
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.items, b.items)


def _from_file(tmp_path: Path):
    return preprocess(load_interactions(_csv(tmp_path), user_col="customer", item_col="sku", time_col="ts"))


def test_dataframe_matches_the_same_rows_read_from_a_file(tmp_path):
    expected = _from_file(tmp_path)
    got = preprocess(from_pandas(_frame(), user_col="customer", item_col="sku", time_col="ts"))
    _same(got, expected)
    assert [got.item_ids[i - 1] for i in got.sequence(1)] == ["30", "10"]  # u2: the tie keeps row order
    through_entry = preprocess(load_interactions(_frame(), user_col="customer", item_col="sku", time_col="ts"))
    _same(through_entry, expected)


def test_dataframe_datetimes_ratings_and_preprocessing_steps():
    frame = _frame().assign(
        when=pd.to_datetime(_frame()["ts"], unit="D", origin="2020-01-01"), stars=[5, 1, 4, 3, 5, 2, 4]
    )
    interactions = from_pandas(frame, user_col="customer", item_col="sku", time_col="when", rating_col="stars")
    assert interactions.source["path"] == "pandas.DataFrame" and interactions.has_rating
    data = preprocess(interactions, PreprocessingConfig(min_rating=3))
    assert interactions.dataset["timestamp"][1] == 1577923200.0  # 2020-01-02 in Unix seconds
    assert data.n_interactions == 5 and data.metadata["steps"][0]["removed"] == 2


def test_dataframe_errors_name_the_column_and_row():
    with pytest.raises(UnknownColumnError, match="no column 'user'.*available columns: 'customer', 'sku', 'ts'"):
        from_pandas(_frame(), user_col="user", item_col="sku", time_col="ts")
    broken = _frame().astype({"customer": object})
    broken.loc[2, "customer"] = None
    with pytest.raises(MalformedLineError, match="DataFrame, line 3: empty user_id"):
        from_pandas(broken, user_col="customer", item_col="sku", time_col="ts")
    with pytest.raises(InteractionDataError, match="cannot order the interactions"):
        from_pandas(_frame(), user_col="customer", item_col="sku")
    with pytest.raises(TypeError, match="expects a pandas.DataFrame"):
        from_pandas(ROWS, user_col="customer", item_col="sku")


def test_dataset_in_any_row_order_and_dataset_dict(tmp_path):
    expected = _from_file(tmp_path)
    dataset = datasets.Dataset.from_pandas(_frame(), preserve_index=False)
    _same(preprocess(from_dataset(dataset, user_col="customer", item_col="sku", time_col="ts")), expected)
    selected = dataset.select(range(len(ROWS)))  # an indices mapping, read in its current order
    _same(preprocess(from_dataset(selected, user_col="customer", item_col="sku", time_col="ts")), expected)
    both = datasets.DatasetDict({"train": dataset, "test": dataset.select([0])})
    with pytest.raises(InteractionDataError, match="splits train, test; pick one"):
        from_dataset(both, user_col="customer", item_col="sku", time_col="ts")
    assert len(from_dataset(both, split="test", user_col="customer", item_col="sku", time_col="ts")) == 1
    with pytest.raises(UnknownColumnError, match="asked for as the time column"):
        from_dataset(dataset, user_col="customer", item_col="sku", time_col="time")


def test_local_data_folder_through_datasets_load_dataset(tmp_path):
    expected = _from_file(tmp_path)
    folder = tmp_path / "logs_repo"
    folder.mkdir()
    _frame().to_csv(folder / "train.csv", index=False)
    got = load_interactions(str(folder), user_col="customer", item_col="sku", time_col="ts", cache_dir=str(tmp_path))
    assert got.source["format"] == "folder" and got.source["split"] == "train"
    _same(preprocess(got), expected)
    with pytest.raises(InteractionDataError, match="needs user_col and item_col"):
        load_interactions(str(folder))


def test_hub_dataset_id_goes_to_load_dataset_with_revision_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, split=None, revision=None, cache_dir=None):
        calls.append((path, split, revision))
        return datasets.Dataset.from_pandas(_frame(), preserve_index=False)

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load_dataset)
    got = load_interactions("someone/shop-logs@v1.0", split="validation", user_col="customer", item_col="sku",
                            time_col="ts")  # fmt: skip
    assert calls == [("someone/shop-logs", "validation", "v1.0")]
    assert got.source["format"] == "hub" and got.source["revision"] == "v1.0" and len(got) == len(ROWS)
    with pytest.raises(FileNotFoundError, match="known presets"):
        load_interactions("someone/missing.csv")  # a file name, not a repository id: not sent to the Hub
    assert len(calls) == 1


_HUB_LOADER = """
import json, sys
from blossom_hf.data import load_interactions, preprocess
out = {}
for source in sys.argv[1:]:
    got = load_interactions(source, user_col="customer", item_col="sku", time_col="ts")
    data = preprocess(got)
    out[source] = {"format": got.source["format"], "items": data.items.tolist(), "ids": data.item_ids}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(olah_missing_reason() is not None, reason=str(olah_missing_reason()))
def test_hub_dataset_id_and_hf_path_through_a_local_hub_then_offline_from_the_caches(tmp_path):
    expected = _from_file(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    _frame().to_csv(repo / "train.csv", index=False)
    (repo / "README.md").write_text("---\nlicense: cc0-1.0\n---\nGenerated interactions for a test.\n")
    hub = LocalHub(tmp_path / "hub")
    hub.add_repo("org/shop-logs", repo)  # LocalHub makes model repositories; this one is a dataset repository
    (hub.mirrors / "datasets" / "org").mkdir(parents=True)
    (hub.mirrors / "models" / "org" / "shop-logs").rename(hub.mirrors / "datasets" / "org" / "shop-logs")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.endpoint}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    sources = ["org/shop-logs", "hf://datasets/org/shop-logs/train.csv"]

    def load(**extra) -> dict:
        done = subprocess.run([sys.executable, "-c", _HUB_LOADER, *sources], env={**env, **extra},
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    hub.start()
    try:
        online = load()
    finally:
        hub.stop()
    offline = load(HF_HUB_OFFLINE="1")  # the server is gone: both come from the caches
    for result in (online, offline):
        assert result["org/shop-logs"]["format"] == "hub"
        assert result["hf://datasets/org/shop-logs/train.csv"]["format"] == "csv"
        for got in result.values():
            assert got["items"] == expected.items.tolist() and got["ids"] == expected.item_ids


def test_hf_path_errors_are_one_line():
    with pytest.raises(InteractionDataError, match="expected hf://datasets/<owner>/<name>"):
        load_interactions("hf://just-a-name", user_col="a", item_col="b", time_col="c")
