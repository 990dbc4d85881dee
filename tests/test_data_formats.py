"""Readers: every format into the canonical columns; malformed input gives errors that name the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blossom_hf.data import (
    PRESETS,
    InteractionDataError,
    MalformedLineError,
    UnknownColumnError,
    default_data_root,
    load_interactions,
)
from blossom_hf.data.formats import guess_format

datasets.disable_progress_bars()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def columns(interactions) -> dict:
    return interactions.dataset.to_dict()


def test_movielens_dat_latin1(tmp_path):
    path = write(
        tmp_path / "ratings.dat", "1::10::5::978300760\n1::\xe9t\xe9::3::978302109\n2::10::4::978301968\n", "latin-1"
    )
    got = load_interactions(path)
    assert got.source["format"] == "movielens"
    data = columns(got)
    assert data["user_id"] == ["1", "1", "2"]
    assert data["item_id"] == ["10", "\xe9t\xe9", "10"]
    assert data["rating"] == [5.0, 3.0, 4.0]
    assert data["timestamp"] == [978300760.0, 978302109.0, 978301968.0]
    assert data["line"] == [1, 2, 3]
    assert isinstance(got.dataset, datasets.Dataset)


def test_ml100k_u_data(tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    data = columns(load_interactions(path))
    assert data["user_id"] == ["196", "186"] and data["item_id"] == ["242", "302"]
    assert data["timestamp"] == [881250949.0, 891717742.0]


def test_recbole_inter_header_types(tmp_path):
    path = write(
        tmp_path / "x.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t4\t10\nu1\ti2\t5\t11\n",
    )
    got = load_interactions(path)
    data = columns(got)
    assert data["user_id"] == ["u1", "u1"] and data["item_id"] == ["i1", "i2"]
    assert data["timestamp"] == [10.0, 11.0] and data["line"] == [2, 3]
    assert got.source["field_types"]["user_id"] == "token"


def test_csv_with_chosen_columns_and_gzip(tmp_path):
    text = "who,what,when,stars\nalice,apple,3,5\nbob,pear,1,2\nalice,plum,2,4\n"
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    got = load_interactions(path, user_col="who", item_col="what", time_col="when", rating_col="stars")
    data = columns(got)
    assert data["user_id"] == ["alice", "bob", "alice"]
    assert data["timestamp"] == [3.0, 1.0, 2.0]
    assert data["rating"] == [5.0, 2.0, 4.0]
    assert data["line"] == [2, 3, 4]
    assert got.source["columns"] == {"user_id": "who", "item_id": "what", "timestamp": "when", "rating": "stars"}


def test_tsv_with_order_column_and_empty_times(tmp_path):
    path = write(tmp_path / "r.tsv", "u\ti\tt\tpos\n1\t5\t\t1\n1\t6\t100\t0\n")
    got = load_interactions(path, user_col="u", item_col="i", time_col="t", order_col="pos")
    data = columns(got)
    assert data["timestamp"] == [None, 100.0] and data["order"] == [1.0, 0.0]


def test_integer_ids_stay_integer_text(tmp_path):
    table = pa.table({"user": [1, 2], "item": [10, 20], "ts": [5, 6]})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    data = columns(load_interactions(path, user_col="user", item_col="item", time_col="ts"))
    assert data["user_id"] == ["1", "2"] and data["item_id"] == ["10", "20"]
    # the raw-id rule: a float id column is refused (7.0 does not say whether the id was "7" or "7.0")
    pq.write_table(pa.table({"user": [1, 2], "item": [10.0, 20.0], "ts": [5, 6]}), path)
    with pytest.raises(InteractionDataError, match=r"'item' holds double numbers.*integers or strings"):
        load_interactions(path, user_col="user", item_col="item", time_col="ts")


def test_parquet_timestamps_become_seconds(tmp_path):
    table = pa.table(
        {"u": ["a", "a"], "i": ["x", "y"], "at": pa.array([1_000_000_000, 2_000_000_000], pa.timestamp("s"))}
    )
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    data = columns(load_interactions(path, user_col="u", item_col="i", time_col="at"))
    assert data["timestamp"] == [1e9, 2e9]


def test_jsonl_iso_times(tmp_path):
    rows = [{"u": "a", "i": "x", "t": "2020-01-01T00:00:01"}, {"u": "a", "i": "y", "t": "2020-01-01T00:00:03"}]
    path = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    data = columns(load_interactions(path, user_col="u", item_col="i", time_col="t"))
    assert data["timestamp"][1] - data["timestamp"][0] == 2.0


def test_sequence_lines(tmp_path):
    path = write(tmp_path / "Beauty.txt", "1 5 6 7\n2 8\n\n3 9 9\n")
    got = load_interactions(path)
    assert got.source["format"] == "sequences" and got.source["blank_lines"] == 1
    data = columns(got)
    assert data["user_id"] == ["1", "1", "1", "2", "3", "3"]
    assert data["item_id"] == ["5", "6", "7", "8", "9", "9"]
    assert data["line"] == [1, 1, 1, 2, 4, 4]
    assert data["order"] == sorted(data["order"])


def test_user_item_lines(tmp_path):
    path = write(tmp_path / "Video.txt", "1 5\n1 6\n2 5\n")
    got = load_interactions(path)
    assert got.source["format"] == "user-item"
    assert columns(got)["order"] == [1.0, 2.0, 3.0]


def test_guess_format_names(tmp_path):
    assert guess_format(Path("a/ratings.dat")) == "movielens"
    assert guess_format(Path("a/b.tsv.gz")) == "tsv"
    assert guess_format(Path("a.inter")) == "recbole"
    with pytest.raises(InteractionDataError, match="cannot guess"):
        guess_format(Path("a.xyz"))


# --- malformed input -----------------------------------------------------------------------------


def test_bad_field_count_names_line(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::11::5\n")
    with pytest.raises(MalformedLineError, match=r"line 2: expected 4 fields") as info:
        load_interactions(path)
    assert info.value.line == 2 and "1::11::5" in str(info.value)


def test_non_numeric_time_names_line(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t100\n\n1\t3\t3\tyesterday\n")
    with pytest.raises(MalformedLineError, match=r"line 3: timestamp 'yesterday' is not a number"):
        load_interactions(path)


def test_csv_parser_error_names_line(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,2,3\n4,5,6,7\n")
    with pytest.raises(MalformedLineError, match="line 3"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_csv_empty_user_names_line(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,2,3\n,5,6\n")
    with pytest.raises(MalformedLineError, match=r"line 3: empty user_id"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_unknown_column_lists_available(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,ts\n1,2,3\n")
    with pytest.raises(UnknownColumnError) as info:
        load_interactions(path, user_col="user", item_col="movie", time_col="ts")
    message = str(info.value)
    assert "'movie'" in message and "'user', 'item', 'ts'" in message
    assert info.value.available == ["user", "item", "ts"]


def test_table_needs_an_order(tmp_path):
    path = write(tmp_path / "x.csv", "user,item\n1,2\n")
    with pytest.raises(InteractionDataError, match="assume_file_order"):
        load_interactions(path, user_col="user", item_col="item")
    data = columns(load_interactions(path, user_col="user", item_col="item", assume_file_order=True))
    assert data["order"] == [2.0]


def test_fixed_layout_refuses_column_options(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n")
    with pytest.raises(InteractionDataError, match="fixed layout"):
        load_interactions(path, user_col="user")


def test_missing_file_and_unknown_preset():
    with pytest.raises(FileNotFoundError, match="known presets"):
        load_interactions("no-such-file.csv")
    with pytest.raises(InteractionDataError, match="unknown format"):
        load_interactions(__file__, format="xml")


# --- the shared datasets (skipped where ../shared/data is absent) ---------------------------------


@pytest.mark.parametrize("name,rows", [("ml-100k", 100_000), ("beauty", 198_502), ("video-games", 287_107)])
def test_presets(name, rows):
    if not (default_data_root() / PRESETS[name].relative_path).exists():
        pytest.skip(f"{name} not available")
    got = load_interactions(name)
    assert len(got) == rows and got.source["preset"] == name
