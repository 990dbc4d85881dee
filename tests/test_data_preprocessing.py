"""Preprocessing: de-duplication, rating threshold, iterated k-core, stable ordering, id maps, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from blossom_hf.data import (
    DataSpec,
    InteractionDataError,
    OrderingError,
    PreprocessingConfig,
    SequenceData,
    load_interactions,
    preprocess,
)

datasets.disable_progress_bars()


def csv_file(tmp_path: Path, rows: list[tuple], header: str = "user,item,time,rating") -> Path:
    path = tmp_path / "log.csv"
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def load_csv(path: Path, **kwargs):
    options = {"user_col": "user", "item_col": "item", "time_col": "time", "rating_col": "rating"}
    options.update(kwargs)
    return load_interactions(path, **options)


def histories(data: SequenceData) -> dict[str, list[str]]:
    """user raw id -> raw item ids in order."""
    users = data.user_ids.to_pylist()
    return {users[u]: [data.item_ids[i - 1] for i in data.sequence(u)] for u in range(data.n_users)}


def test_time_order_with_stable_ties_and_unsorted_file(tmp_path):
    rows = [("u", "c", 5, 1), ("v", "a", 1, 1), ("u", "a", 3, 1), ("u", "b", 3, 1), ("u", "d", 1, 1)]
    data = preprocess(load_csv(csv_file(tmp_path, rows)))
    # u: d@1, then a and b tie at 3 (file order a before b), then c@5
    assert histories(data) == {"u": ["d", "a", "b", "c"], "v": ["a"]}
    assert data.item_ids == ["a", "b", "c", "d"]  # text ids are sorted as text
    assert data.items.dtype == np.int32 and data.offsets.tolist() == [0, 4, 5]
    order_step = next(s for s in data.metadata["steps"] if s["step"] == "order")
    assert "stable" in order_step["ties"]


def test_integer_ids_sort_numerically_and_keep_contiguous_values(tmp_path):
    rows = [(1, 10, 1, 1), (1, 2, 2, 1), (1, 1, 3, 1), (2, 2, 1, 1)]
    data = preprocess(load_csv(csv_file(tmp_path, rows)))
    assert data.item_ids == ["1", "2", "10"]
    assert data.user_ids.to_pylist() == ["1", "2"]
    first_seen = preprocess(load_csv(csv_file(tmp_path, rows)), PreprocessingConfig(item_id_order="first-seen"))
    assert first_seen.item_ids == ["10", "2", "1"]


def test_order_column_sorts_non_monotonic_file(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("u\ti\tpos\n1\tc\t2\n1\ta\t0\n1\tb\t1\n")
    data = preprocess(load_interactions(path, user_col="u", item_col="i", order_col="pos"))
    assert histories(data) == {"1": ["a", "b", "c"]}


def test_repeated_order_value_is_an_error(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("u\ti\tpos\n1\tc\t2\n1\ta\t2\n")
    with pytest.raises(OrderingError, match=r"two interactions at order position 2 \(lines 2 and 3"):
        preprocess(load_interactions(path, user_col="u", item_col="i", order_col="pos"))


def test_time_running_backwards_along_order_is_an_error(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("u\ti\tt\tpos\n1\ta\t10\t0\n1\tb\t\t1\n1\tc\t5\t2\n")
    with pytest.raises(OrderingError, match="time goes backwards"):
        preprocess(load_interactions(path, user_col="u", item_col="i", time_col="t", order_col="pos"))


def test_missing_time_without_order_is_an_error(tmp_path):
    path = csv_file(tmp_path, [("u", "a", 1, 1), ("u", "b", "", 1)])
    with pytest.raises(OrderingError, match=r"no value in the time column .*line 3"):
        preprocess(load_csv(path))


def test_dedupe_keeps_earliest(tmp_path):
    rows = [("u", "a", 1, 1), ("u", "b", 2, 1), ("u", "a", 1, 1), ("u", "a", 3, 1)]
    path = csv_file(tmp_path, rows)
    by_time = preprocess(load_csv(path), PreprocessingConfig(dedupe="user-item-time"))
    assert histories(by_time) == {"u": ["a", "b", "a"]}
    by_item = preprocess(load_csv(path), PreprocessingConfig(dedupe="user-item"))
    assert histories(by_item) == {"u": ["a", "b"]}
    step = by_item.metadata["steps"][0]
    assert step == {"step": "dedupe", "key": "user-item", "kept": "earliest", "removed": 2, "remaining": 2}


def test_dedupe_by_time_needs_time(tmp_path):
    path = tmp_path / "Video.txt"
    path.write_text("1 5\n1 5\n")
    with pytest.raises(InteractionDataError, match="needs a time column"):
        preprocess(load_interactions(path), PreprocessingConfig(dedupe="user-item-time"))


def test_rating_threshold(tmp_path):
    rows = [("u", "a", 1, 5), ("u", "b", 2, 2), ("u", "c", 3, 4)]
    data = preprocess(load_csv(csv_file(tmp_path, rows)), PreprocessingConfig(min_rating=4))
    assert histories(data) == {"u": ["a", "c"]}
    path = tmp_path / "Video.txt"
    path.write_text("1 5\n")
    with pytest.raises(InteractionDataError, match="needs a rating column"):
        preprocess(load_interactions(path), PreprocessingConfig(min_rating=4))


def test_k_core_iterates_until_stable(tmp_path):
    # 2-core. Round 1 removes user z (1 interaction) and item q (1 interaction). That leaves item p with
    # only one interaction (from y), so round 2 removes p, which leaves y with one -> round 3 removes y,
    # which leaves item b with one -> round 4 removes b ... until only x/w on a/c remain.
    rows = [
        ("x", "a", 1, 1), ("x", "c", 2, 1), ("w", "a", 1, 1), ("w", "c", 2, 1),
        ("y", "p", 1, 1), ("y", "b", 2, 1), ("v", "b", 1, 1), ("v", "q", 2, 1),
        ("z", "p", 1, 1),
    ]  # fmt: skip
    data = preprocess(load_csv(csv_file(tmp_path, rows)), PreprocessingConfig(user_k=2, item_k=2))
    assert histories(data) == {"w": ["a", "c"], "x": ["a", "c"]}
    step = next(s for s in data.metadata["steps"] if s["step"] == "k_core")
    assert step["iterations"] >= 2 and step["remaining"] == 4
    counts_users = np.bincount(np.repeat(np.arange(data.n_users), data.lengths))
    assert counts_users.min() >= 2 and np.bincount(data.items)[1:].min() >= 2


def test_k_core_on_real_data_is_a_fixed_point():
    spec = DataSpec("video-games", preprocessing=PreprocessingConfig(user_k=5, item_k=5))
    try:
        data = spec.load()
    except FileNotFoundError:
        pytest.skip("video-games not available")
    assert data.lengths.min() >= 5 and np.bincount(data.items)[1:].min() >= 5
    assert data.metadata["steps"][0]["iterations"] > 1


def test_given_vocabulary_numbers_items_and_drops_unknown(tmp_path):
    rows = [("u", "a", 1, 1), ("u", "zz", 2, 1), ("u", "b", 3, 1)]
    data = preprocess(load_csv(csv_file(tmp_path, rows)), item_vocabulary=["b", "a"])
    assert data.item_ids == ["b", "a"]
    assert data.sequence(0).tolist() == [2, 1]
    assert data.metadata["steps"][-1]["dropped_unknown_items"] == 1


def test_item_vocabulary_and_save_load(tmp_path):
    rows = [(1, 10, 1, 1), (1, 20, 2, 1), (2, 10, 1, 1)]
    data = preprocess(load_csv(csv_file(tmp_path, rows)))
    vocabulary = data.item_vocabulary()
    assert vocabulary.raw_ids == [10, 20] and vocabulary.index(20) == 2
    assert data.item_index() == {"10": 1, "20": 2}
    dataset = data.to_dataset()
    assert dataset.column_names == ["user_id", "item_ids"] and dataset[0]["item_ids"] == [1, 2]
    data.save(tmp_path / "saved")
    again = SequenceData.load(tmp_path / "saved")
    assert again.item_ids == data.item_ids and again.offsets.tolist() == data.offsets.tolist()
    assert again.items.tolist() == data.items.tolist()
    assert json.loads(json.dumps(data.metadata)) == again.metadata


def test_metadata_records_every_step(tmp_path):
    rows = [("u", "a", 1, 5), ("u", "b", 2, 5), ("v", "a", 1, 5), ("v", "b", 2, 1)]
    data = preprocess(
        load_csv(csv_file(tmp_path, rows)), PreprocessingConfig(dedupe="user-item", min_rating=2, user_k=2, item_k=1)
    )
    assert [s["step"] for s in data.metadata["steps"]] == ["dedupe", "rating_threshold", "k_core", "order", "item_ids"]
    assert data.metadata["preprocessing"]["min_rating"] == 2
    assert data.metadata["stats"]["n_users"] == 1
    json.dumps(data.metadata)


def test_data_spec_round_trip(tmp_path):
    spec = DataSpec("ml-100k", preprocessing=PreprocessingConfig(user_k=5))
    spec.save(tmp_path)
    assert DataSpec.load_file(tmp_path) == spec
    with pytest.raises(ValueError, match="unknown data spec field"):
        DataSpec.from_dict({"path": "x", "colour": 1})
