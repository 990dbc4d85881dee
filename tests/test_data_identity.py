"""Counts and arrays identical to the pre-pyarrow implementation (main at 34a4a96), on ML-1M and a 1M log.

The expected digests were computed with that implementation (readers through ``datasets.load_dataset``,
sort by (user, key, line)). The digest covers the user ids, the item map, the CSR arrays and the
leave-one-out split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from blossom_hf.benchmarks.synthetic import synthetic_log, write_log
from blossom_hf.data import (
    PRESETS,
    PreprocessingConfig,
    default_data_root,
    leave_one_out,
    load_interactions,
    preprocess,
)

EXPECTED = {
    "synthetic1000000-csv-k0": {
        "n_users": 10970,
        "n_items": 24269,
        "n_interactions": 1000000,
        "sha256": "7e2f2f563f5d498b94c5b14a3a0b347c1a4f5cbb05afe4ea8350e0fde87acaee"
    },
    "synthetic1000000-csv-k5": {
        "n_users": 10793,
        "n_items": 13244,
        "n_interactions": 970950,
        "sha256": "5d378754d2f98d787986051728ec058d130dd797d6cd6ec9e5a0d9e6d2d8f7f9"
    },
    "synthetic1000000-parquet-k0": {
        "n_users": 10970,
        "n_items": 24269,
        "n_interactions": 1000000,
        "sha256": "7e2f2f563f5d498b94c5b14a3a0b347c1a4f5cbb05afe4ea8350e0fde87acaee"
    },
    "synthetic1000000-parquet-k5": {
        "n_users": 10793,
        "n_items": 13244,
        "n_interactions": 970950,
        "sha256": "5d378754d2f98d787986051728ec058d130dd797d6cd6ec9e5a0d9e6d2d8f7f9"
    },
    "ml-1m": {
        "n_users": 6040,
        "n_items": 3706,
        "n_interactions": 1000209,
        "sha256": "f9d11c1e5833074250f3fc5478e3b173254c665f4b4f5b8c8cd52419506f1de2"
    },
    "ml-1m-k5": {
        "n_users": 6040,
        "n_items": 3416,
        "n_interactions": 999611,
        "sha256": "7f5fd0e3e653d0e9cc561c97afa6cb11dc7ae1b46e0de76a5e659269f7307fb9"
    },
    "ml-1m-dedupe-r4": {
        "n_users": 6034,
        "n_items": 3125,
        "n_interactions": 574376,
        "sha256": "4f5105b98937947ade8264b46c24cffabacfad032344b2d1a7ad0b128b4a62d9"
    },
    "ml-100k": {
        "n_users": 943,
        "n_items": 1682,
        "n_interactions": 100000,
        "sha256": "1d9b5a125c595bf673342520690ca2ef736cd0a3718acd2ab778a46cf45530ad"
    },
    "beauty": {
        "n_users": 22363,
        "n_items": 12101,
        "n_interactions": 198502,
        "sha256": "94eb632488b8c1b0cb8dfd146598e7780df8dd6dc267bbf0ed60012bfb45c5c4"
    },
    "video-games": {
        "n_users": 31013,
        "n_items": 23715,
        "n_interactions": 287107,
        "sha256": "36ea31d2c18aed54c983f18cb256217760db8d643461994e3349285d624d0567"
    }
}

CONFIGS = {
    "": PreprocessingConfig(),
    "-k5": PreprocessingConfig(user_k=5, item_k=5),
    "-dedupe-r4": PreprocessingConfig(dedupe="user-item", min_rating=4, user_k=5, item_k=5),
}


def digest(data) -> dict:
    h = hashlib.sha256()
    h.update("\n".join(data.user_ids.to_pylist()).encode())
    h.update(b"\0")
    h.update("\n".join(data.item_ids).encode())
    h.update(b"\0")
    h.update(np.asarray(data.offsets, dtype=np.int64).tobytes())
    h.update(np.asarray(data.items, dtype=np.int32).tobytes())
    split = leave_one_out(data)
    h.update(split.train_ends.astype(np.int64).tobytes())
    h.update(split.evaluated_users.astype(np.int64).tobytes())
    return {"n_users": data.n_users, "n_items": data.n_items, "n_interactions": data.n_interactions,
            "sha256": h.hexdigest()}  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    table = synthetic_log(1_000_000, seed=0)
    return {fmt: write_log(table, root / f"s.{fmt}") for fmt in ("csv", "parquet")}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("k", [0, 5])
def test_synthetic_1m_identical_to_before(synthetic_files, fmt, k, tmp_path):
    interactions = load_interactions(
        synthetic_files[fmt], user_col="user_id", item_col="item_id", time_col="timestamp", cache_dir=str(tmp_path)
    )
    data = preprocess(interactions, PreprocessingConfig(user_k=k, item_k=k))
    assert digest(data) == EXPECTED[f"synthetic1000000-{fmt}-k{k}"]


@pytest.mark.parametrize(
    "name", ["ml-1m", "ml-1m-k5", "ml-1m-dedupe-r4", "ml-100k", "beauty", "video-games"]
)
def test_presets_identical_to_before(name, tmp_path):
    preset = name.split("-k5")[0].split("-dedupe")[0]
    if not (default_data_root() / PRESETS[preset].relative_path).exists():
        pytest.skip(f"{preset} not available")
    config = CONFIGS[name[len(preset):]]
    if name == "video-games":
        config = PreprocessingConfig(item_id_order="first-seen")
    data = preprocess(load_interactions(preset, cache_dir=str(tmp_path)), config)
    assert digest(data) == EXPECTED[name]
