"""The distributed hand-off of docs/BENCHMARKS_DATA.md: per-user sequence Parquet written by polars or
PySpark is read directly and gives the same histories as the flat log (skipped where the engine is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from blossom_hf.benchmarks.synthetic import synthetic_log, write_log
from blossom_hf.data import PreprocessingConfig, load_interactions, preprocess


@pytest.fixture(scope="module")
def flat_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("handoff")
    return write_log(synthetic_log(20_000, seed=3), root / "log.parquet")


def same_histories(flat_path, sequences_path, tmp_path) -> None:
    config = PreprocessingConfig(user_k=5, item_k=5)
    flat = preprocess(load_interactions(flat_path, user_col="user_id", item_col="item_id", time_col="timestamp",
                                        cache_dir=str(tmp_path)), config)  # fmt: skip
    sequences = load_interactions(sequences_path, user_col="user_id", item_col="item_id", time_col="timestamp",
                                  cache_dir=str(tmp_path))  # fmt: skip
    assert sequences.source["layout"].startswith("per-user sequences")
    got = preprocess(sequences, config)
    assert got.user_ids.to_pylist() == flat.user_ids.to_pylist()
    assert got.item_ids == flat.item_ids
    assert np.array_equal(got.offsets, flat.offsets) and np.array_equal(got.items, flat.items)


def test_polars_sequences(flat_log, tmp_path):
    pl = pytest.importorskip("polars")
    # the snippet of docs/BENCHMARKS_DATA.md
    sequences = (
        pl.scan_parquet(flat_log)
        .sort(["user_id", "timestamp"], maintain_order=True)  # stable: exact ties keep the log's order
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id"), pl.col("timestamp"))
        .collect()
    )
    sequences.write_parquet(tmp_path / "sequences.parquet")
    same_histories(flat_log, tmp_path / "sequences.parquet", tmp_path)


@pytest.mark.slow
def test_pyspark_sequences(flat_log, tmp_path):
    pytest.importorskip("pyspark")
    import shutil

    if shutil.which("java") is None:
        pytest.skip("no JVM")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        # the snippet of docs/BENCHMARKS_DATA.md
        log = spark.read.parquet(str(flat_log)).withColumn("row", F.monotonically_increasing_id())
        events = F.sort_array(F.collect_list(F.struct("timestamp", "row", "item_id")))
        sequences = log.groupBy("user_id").agg(events.alias("events")).select(
            "user_id", F.col("events.item_id").alias("item_id"), F.col("events.timestamp").alias("timestamp")
        )
        sequences.write.mode("overwrite").parquet(str(tmp_path / "sequences.parquet"))
    finally:
        spark.stop()
    same_histories(flat_log, tmp_path / "sequences.parquet", tmp_path)
