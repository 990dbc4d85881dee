"""Bad or surprising input: one clear line naming the file, line and fix; the raw-id rule; BOMs;
content fingerprints; time scales; per-user sequence files as written by distributed engines."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blossom_hf.data import (
    DataSpec,
    InteractionDataError,
    MalformedLineError,
    PreprocessingConfig,
    load_interactions,
    preprocess,
)
from blossom_hf.data.errors import DataChangedError
from blossom_hf.evaluation.ranking import evaluate_ranking, sample_negatives

BOM = "\ufeff"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOSSOM_HF_CACHE", str(tmp_path / "cache"))


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def histories(data) -> dict[str, list[str]]:
    users = data.user_ids.to_pylist()
    return {users[u]: [data.item_ids[i - 1] for i in data.sequence(u)] for u in range(data.n_users)}


# --- item 8: one raw-id rule -----------------------------------------------------------------------


def test_leading_zeros_and_decimal_points_are_distinct_ids_and_the_vocabulary_accepts_them(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,007,1\n1,7,2\n1,7.0,3\n1,-0,4\n1,0,5\n")
    data = preprocess(load_interactions(path, user_col="u", item_col="i", time_col="t"))
    assert sorted(data.item_ids) == sorted(["007", "7", "7.0", "-0", "0"])
    vocabulary = data.item_vocabulary()  # used to fail: "duplicate raw ids"
    assert len(vocabulary) == 5 and vocabulary.id_type == "str"
    assert vocabulary.encode(["007", "7"]) == [data.item_ids.index("007") + 1, data.item_ids.index("7") + 1]


def test_same_ids_read_the_same_from_csv_parquet_and_json(tmp_path):
    csv_path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n1,20,2\n2,10,3\n")
    pq.write_table(pa.table({"u": [1, 1, 2], "i": [10, 20, 10], "t": [1, 2, 3]}), tmp_path / "x.parquet")
    rows = [{"u": 1, "i": "10", "t": 1}, {"u": 1, "i": "20", "t": 2}, {"u": 2, "i": "10", "t": 3}]
    write(tmp_path / "x.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    results = []
    for name in ("x.csv", "x.parquet", "x.jsonl"):
        data = preprocess(load_interactions(tmp_path / name, user_col="u", item_col="i", time_col="t"))
        results.append((histories(data), data.item_ids))
    assert results[0] == results[1] == results[2]
    assert csv_path.exists()


def test_float_ids_in_json_are_refused_with_the_fix(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"u": 1, "i": 7.0, "t": 1}\n{"u": 1, "i": 8.5, "t": 2}\n')
    with pytest.raises(InteractionDataError, match="item_id column 'i' holds double.*integers or strings"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_json_column_mixing_text_and_numbers_names_the_line(tmp_path):
    lines = ['{"u": "a", "i": 1, "t": 1}', '{"u": "a", "i": 2, "t": 2}', '{"u": 3, "i": 2, "t": 3}']
    path = write(tmp_path / "x.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(MalformedLineError, match=r"line 3: field 'u' is a number here but a text on line 1"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


# --- item 9: a UTF-8 byte-order mark is stripped by every reader -----------------------------------


@pytest.mark.parametrize(
    "name,text,options",
    [
        ("ratings.dat", "1::10::5::100\n1::11::4::101\n", {}),
        ("u.data", "1\t10\t5\t100\n1\t11\t4\t101\n", {}),
        ("Video.txt", "1 10\n1 11\n", {}),
        ("Beauty.txt", "1 10 11 12\n", {}),
        ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t10\t100\n1\t11\t101\n", {}),
        ("x.csv", "u,i,t\n1,10,100\n1,11,101\n", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("x.tsv", "u\ti\tt\n1\t10\t100\n1\t11\t101\n", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("x.jsonl", '{"u": "1", "i": "10", "t": 1}\n{"u": "1", "i": "11", "t": 2}\n',
         {"user_col": "u", "item_col": "i", "time_col": "t"}),
    ],
)
def test_bom_is_stripped(tmp_path, name, text, options):
    encoding = "latin-1" if name.endswith(".dat") else "utf-8"
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode(encoding))
    got = load_interactions(path, **options)
    assert set(got.dataset["user_id"]) == {"1"}  # no phantom user "\ufeff1"
    assert len(got) == (3 if name == "Beauty.txt" else 2)


# --- item 10: content fingerprint in the spec; the cache is keyed on content ----------------------


def test_same_size_same_mtime_edit_is_noticed_by_cache_and_spec(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n1,11,2\n1,12,3\n")
    spec = DataSpec(path=str(path), user_col="u", item_col="i", time_col="t")
    data = spec.load()
    fingerprint = data.metadata["data_spec"]["fingerprint"]
    assert fingerprint.startswith("xxh3-128:")
    saved = DataSpec.from_dict(data.metadata["data_spec"])
    assert saved.fingerprint == fingerprint
    assert saved.load().item_ids == ["10", "11", "12"]  # unchanged file: fine

    stat = path.stat()
    write(path, "u,i,t\n1,10,1\n1,11,2\n1,19,3\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time
    assert path.stat().st_size == stat.st_size
    assert load_interactions(path, user_col="u", item_col="i", time_col="t").dataset["item_id"][-1] == "19"
    with pytest.raises(DataChangedError, match=r"changed since this data spec was written"):
        saved.load()
    assert saved.load(check_fingerprint=False).item_ids == ["10", "11", "19"]


def test_spec_file_round_trip_keeps_the_fingerprint(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n")
    data = DataSpec(path=str(path), user_col="u", item_col="i", time_col="t").load()
    DataSpec.from_dict(data.metadata["data_spec"]).save(tmp_path)
    assert DataSpec.load_file(tmp_path).fingerprint == data.metadata["fingerprint"]


# --- item 11: implausible times, uniN larger than the catalogue ------------------------------------


def test_mixed_seconds_and_milliseconds_warn(tmp_path, caplog):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1600000000\n1,11,1600000001000\n2,10,1600000002\n")
    with caplog.at_level(logging.WARNING, logger="blossom_hf.data.formats"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    assert "mixes units" in caplog.text and "milliseconds (first: line 3" in caplog.text


def test_one_time_unit_does_not_warn(tmp_path, caplog):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1600000000\n1,11,1600000100\n")
    with caplog.at_level(logging.WARNING, logger="blossom_hf.data.formats"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    assert "mixes units" not in caplog.text


def test_infinite_times_are_rejected(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,5\n1,11,inf\n")
    with pytest.raises(MalformedLineError, match=r"line 3: time is inf .*finite number"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    pq.write_table(pa.table({"u": ["a", "a"], "i": ["x", "y"], "t": [1.0, float("inf")]}), tmp_path / "x.parquet")
    with pytest.raises(MalformedLineError, match=r"line 2: time is inf .*finite"):
        load_interactions(tmp_path / "x.parquet", user_col="u", item_col="i", time_col="t")


def test_uni_n_larger_than_the_catalogue_is_refused():
    offsets, items = np.array([0, 3]), np.array([1, 2, 3], dtype=np.int32)
    with pytest.raises(ValueError, match=r"uni50 asks for 50 negatives .* only 10 items"):
        sample_negatives(offsets, items, 10, np.array([0]), 50, seed=0, cache_dir=False)
    from blossom_hf.data.splits import RankingExamples

    examples = RankingExamples(items, np.array([0]), np.array([2]), np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="catalogue has only 10 items"):
        evaluate_ranking(lambda x: x, examples, max_length=5, n_items=10, protocol="uni10",
                         negatives=np.zeros((1, 10), dtype=np.int64))  # fmt: skip


def test_negatives_are_cached_and_identical(tmp_path):
    rng = np.random.default_rng(0)
    offsets = np.arange(0, 201, 20)
    items = rng.integers(1, 500, 200).astype(np.int32)
    users = np.arange(10)
    first = sample_negatives(offsets, items, 500, users, 30, seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("uni30-*.npy"))) == 1
    again = sample_negatives(offsets, items, 500, users, 30, seed=3, cache_dir=tmp_path)
    fresh = sample_negatives(offsets, items, 500, users, 30, seed=3, cache_dir=False)
    assert np.array_equal(first, again) and np.array_equal(first, fresh)
    other = sample_negatives(offsets, items, 500, users, 30, seed=4, cache_dir=tmp_path)
    assert not np.array_equal(first, other) and len(list(tmp_path.glob("uni30-*.npy"))) == 2


# --- item 12: one-line errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options",
    [
        ("x.csv", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("x.tsv", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("x.jsonl", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("x.parquet", {"user_col": "u", "item_col": "i", "time_col": "t"}),
        ("ratings.dat", {}),
        ("u.data", {}),
        ("x.inter", {}),
        ("Video.txt", {}),
    ],
)
def test_empty_files_of_every_format(tmp_path, name, options):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf\n" if name.endswith(".csv") else b"")
    with pytest.raises(InteractionDataError, match=r"is empty .*nothing to read") as info:
        load_interactions(path, **options)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_header_only_csv(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n")
    with pytest.raises(InteractionDataError, match=r"x.csv: the file has a header line but no data rows"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_empty_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    empty = {"u": pa.array([], pa.string()), "i": pa.array([], pa.string()), "t": pa.array([], pa.int64())}
    pq.write_table(pa.table(empty), path)
    with pytest.raises(InteractionDataError, match=r"x.parquet: the parquet data hold no rows"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_bad_utf8_names_line_and_column_and_suggests_the_encoding(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"u,i,t\n1,10,1\n1,caf\xe9,2\n")
    with pytest.raises(MalformedLineError, match=r"line 3: column 6: byte b'\\xe9' is not valid utf-8.*latin-1"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    got = load_interactions(path, user_col="u", item_col="i", time_col="t", encoding="latin-1")
    assert got.dataset["item_id"][1] == "café"
    dat = tmp_path / "u.data"
    dat.write_bytes(b"1\t10\t5\t1\n1\t\xff\t5\t2\n")
    with pytest.raises(MalformedLineError, match=r"u.data, line 2: column 3: byte b'\\xff'"):
        load_interactions(dat)


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"u": "a", "i": "x", "t": 1}\n{"u": "a", "i": "y" "t": 2}\n')
    with pytest.raises(MalformedLineError, match=r"line 2: column \d+: invalid JSON"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_iso_8601_with_z_and_offsets(tmp_path):
    text = "u,i,t\na,x,2020-01-01T00:00:00Z\na,y,2020-01-01T03:00:01+02:00\na,z,2020-01-01 00:00:02\n"
    got = load_interactions(write(tmp_path / "x.csv", text), user_col="u", item_col="i", time_col="t")
    times = got.dataset["timestamp"]
    assert times[1] - times[0] == 3601.0 and times[2] - times[0] == 2.0


def test_wrong_separator_is_suggested(tmp_path):
    path = write(tmp_path / "x.csv", "u;i;t\n1;10;1\n")
    with pytest.raises(InteractionDataError, match=r"splits into 3 columns by ';' and it holds 'u': pass sep=';'"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    assert len(load_interactions(path, user_col="u", item_col="i", time_col="t", sep=";")) == 1


def test_wrong_field_count_in_csv_names_the_line(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n\n1,11,2,9\n")
    with pytest.raises(MalformedLineError, match=r"line 4: expected 3 fields"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")


def test_blank_lines_keep_exact_line_numbers(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n\n\n1,,2\n")
    with pytest.raises(MalformedLineError, match=r"line 5: empty item_id"):
        load_interactions(path, user_col="u", item_col="i", time_col="t")
    got = load_interactions(write(tmp_path / "y.csv", "u,i,t\n1,10,1\n\n1,11,2\n"), user_col="u", item_col="i",
                            time_col="t")  # fmt: skip
    assert got.dataset["line"] == [2, 4] and got.source["blank_lines"] == 1


# --- issue 14: per-user sequences from distributed engines -----------------------------------------


def flat_and_sequences(tmp_path: Path) -> tuple[Path, pa.Table]:
    flat = write(tmp_path / "flat.csv", "u,i,t\n2,5,1\n1,6,2\n1,7,3\n2,8,4\n1,5,5\n3,9,6\n")
    sequences = pa.table(
        {
            "u": ["1", "2", "3"],
            "items": pa.array([[6, 7, 5], [5, 8], [9]], pa.list_(pa.int64())),
            "times": pa.array([[2, 3, 5], [1, 4], [6]], pa.list_(pa.int64())),
        }
    )
    return flat, sequences


def test_sequence_parquet_list_column_is_a_first_class_input(tmp_path):
    flat, sequences = flat_and_sequences(tmp_path)
    pq.write_table(sequences, tmp_path / "seq.parquet")
    expected = preprocess(load_interactions(flat, user_col="u", item_col="i", time_col="t"))
    got = load_interactions(tmp_path / "seq.parquet", user_col="u", item_col="items", time_col="times")
    assert got.source["layout"].startswith("per-user sequences")
    data = preprocess(got)
    assert histories(data) == histories(expected) and data.item_ids == expected.item_ids
    no_times = preprocess(load_interactions(tmp_path / "seq.parquet", user_col="u", item_col="items"))
    assert histories(no_times) == histories(expected)


def test_folder_of_parquet_parts_as_spark_writes_it(tmp_path):
    _, sequences = flat_and_sequences(tmp_path)
    folder = tmp_path / "sequences.parquet"
    folder.mkdir()
    pq.write_table(sequences.slice(0, 2), folder / "part-00000-abc.snappy.parquet")
    pq.write_table(sequences.slice(2), folder / "part-00001-abc.snappy.parquet")
    (folder / "_SUCCESS").write_text("")
    data = preprocess(load_interactions(folder, user_col="u", item_col="items"), PreprocessingConfig())
    assert histories(data) == {"1": ["6", "7", "5"], "2": ["5", "8"], "3": ["9"]}


def test_misaligned_sequence_lists_name_the_row(tmp_path):
    table = pa.table({"u": ["1", "2"], "items": [[1, 2], [3, 4]], "times": [[1, 2], [3]]})
    pq.write_table(table, tmp_path / "seq.parquet")
    with pytest.raises(MalformedLineError, match=r"line 2: 'times' has 1 values but 'items' has 2"):
        load_interactions(tmp_path / "seq.parquet", user_col="u", item_col="items", time_col="times")


def test_arrow_ipc_file_input(tmp_path):
    table = pa.table({"u": ["a", "a", "b"], "i": [1, 2, 1], "t": [1, 2, 3]})
    with pa.OSFile(str(tmp_path / "x.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = preprocess(load_interactions(tmp_path / "x.arrow", user_col="u", item_col="i", time_col="t"))
    assert histories(data) == {"a": ["1", "2"], "b": ["1"]}


def test_saved_vocabulary_refuses_int_type_for_ids_that_are_not_plain_integers():
    from blossom_hf.vocabulary import ItemVocabulary

    saved = {"format": "blossomrec-item-vocabulary", "version": 1, "id_type": "int", "items": ["007", "7"]}
    with pytest.raises(ValueError, match="not plain integers"):
        ItemVocabulary.from_dict(saved)
    with pytest.raises(ValueError, match="compared as text"):
        ItemVocabulary([7, "7"])


def test_parsed_table_is_cached_and_memory_mapped(tmp_path, caplog):
    path = write(tmp_path / "x.csv", "u,i,t\n1,10,1\n1,11,2\n2,10,3\n")
    cache = tmp_path / "parsed"
    first = load_interactions(path, user_col="u", item_col="i", time_col="t", cache_dir=str(cache))
    assert len(list(cache.glob("*.arrow"))) == 1 and not list(cache.glob("*.partial"))
    with caplog.at_level(logging.INFO, logger="blossom_hf.data.formats"):
        again = load_interactions(path, user_col="u", item_col="i", time_col="t", cache_dir=str(cache))
    assert "from the cache" in caplog.text
    assert again.dataset.to_dict() == first.dataset.to_dict()
    before = pa.total_allocated_bytes()
    load_interactions(path, user_col="u", item_col="i", time_col="t", cache_dir=str(cache)).table.column("timestamp")
    assert pa.total_allocated_bytes() == before  # mapped from the file, nothing copied into Arrow's pool
