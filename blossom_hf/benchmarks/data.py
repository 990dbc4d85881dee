"""Data-preparation benchmark: blossom_hf against a plain polars pipeline of the same steps.

``python -m blossom_hf.benchmarks.data --sizes 1M 5M 20M --formats csv parquet`` (or
``blossom-hf benchmark data ...``) generates seeded synthetic logs (:mod:`blossom_hf.benchmarks.synthetic`),
then, for every size and format, runs each pipeline in a fresh process on the same file and records the
wall time and the peak resident memory of that process. Both pipelines go from the file to everything
training needs before its first step: the 5-core histories (users, item map 1..N, CSR arrays), the
leave-one-out split, the SASRec-style training windows and the validation/test examples. Each process
writes a SHA-256 of its users, items, arrays and split; a run whose two digests differ is reported as a
mismatch (and makes the command exit non-zero).

blossom_hf starts with an empty parsed-table cache in every run (a cold start); the input file itself
is in the operating system's page cache for both pipelines (it was just written).

polars is needed only here (``pip install "blossom_hf[bench]"``); the library never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "data preparation speed and memory: blossom_hf vs a polars pipeline on synthetic logs"
logger = logging.getLogger(__name__)

PIPELINES = ("blossom_hf", "polars")
WINDOW = 50


def parse_size(text: str) -> int:
    """``5M`` -> 5_000_000, ``200k`` -> 200_000, ``1000`` -> 1000."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "kmg" else text
    return int(float(number) * scale)


def digest(user_ids: list[str], item_ids: list[str], offsets: np.ndarray, items: np.ndarray,
           train_ends: np.ndarray, evaluated: np.ndarray) -> str:  # fmt: skip
    """SHA-256 of the histories and the split (the comparison key of the two pipelines)."""
    h = hashlib.sha256()
    h.update("\n".join(user_ids).encode())
    h.update(b"\0")
    h.update("\n".join(item_ids).encode())
    h.update(b"\0")
    for array, dtype in ((offsets, np.int64), (items, np.int32), (train_ends, np.int64), (evaluated, np.int64)):
        h.update(np.ascontiguousarray(array, dtype=dtype).data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# the two pipelines (each runs in its own process)


def run_blossom(path: Path, k: int) -> dict[str, Any]:
    from ..data import PreprocessingConfig, leave_one_out, load_interactions, preprocess, training_examples

    started = time.perf_counter()
    interactions = load_interactions(path, user_col="user_id", item_col="item_id", time_col="timestamp")
    read = time.perf_counter()
    data = preprocess(interactions, PreprocessingConfig(user_k=k, item_k=k))
    del interactions
    split = leave_one_out(data)
    examples = training_examples(split, "sasrec", WINDOW)
    valid, test = split.validation(), split.test()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "read_seconds": read - started,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": data.n_interactions,
        "training_windows": len(examples),
        "evaluated": len(valid) + len(test),
        "digest": digest(data.user_ids.to_pylist(), data.item_ids, data.offsets, data.items, split.train_ends,
                         split.evaluated_users),  # fmt: skip
    }


def run_polars(path: Path, k: int) -> dict[str, Any]:
    import polars as pl

    from ..data.examples import WindowExamples

    started = time.perf_counter()
    if path.suffix == ".csv":
        frame = pl.read_csv(
            path,
            columns=["user_id", "item_id", "timestamp"],
            schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Float64},
        )
    else:
        frame = pl.read_parquet(path, columns=["user_id", "item_id", "timestamp"]).with_columns(
            pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8), pl.col("timestamp").cast(pl.Float64)
        )
    read = time.perf_counter()
    # iterated k-core: users and items below k removed together, until stable
    while k > 1:
        kept = frame.filter((pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k))
        if kept.height == frame.height:
            break
        frame = kept

    def natural(column: str) -> list[pl.Expr]:
        integer = frame.select(pl.col(column).str.contains(r"^-?\d{1,18}$").all()).item()
        return [pl.col(column).cast(pl.Int64), pl.col(column)] if integer else [pl.col(column)]

    # histories: by user (numeric when every id is an integer), then time; ties keep file order
    frame = frame.sort([*natural("user_id"), "timestamp"], maintain_order=True)
    item_map = (
        frame.select(pl.col("item_id").unique())
        .sort(natural("item_id"))
        .with_row_index("index", offset=1)
        .with_columns(pl.col("index").cast(pl.Int32))
    )
    frame = frame.join(item_map, on="item_id", how="left", maintain_order="left")
    users = frame.group_by("user_id", maintain_order=True).len()
    lengths = users["len"].to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = frame["index"].to_numpy()
    evaluated = np.flatnonzero(lengths >= 3)
    train_ends = np.where(lengths >= 3, offsets[1:] - 2, offsets[1:]).astype(np.int64)
    examples = WindowExamples(items, offsets[:-1], train_ends, WINDOW)
    seconds = time.perf_counter() - started
    user_ids = users["user_id"].to_list()
    item_ids = item_map["item_id"].to_list()
    return {
        "seconds": seconds,
        "read_seconds": read - started,
        "users": len(user_ids),
        "items": len(item_ids),
        "interactions": int(offsets[-1]),
        "training_windows": len(examples),
        "evaluated": 2 * len(evaluated),
        "digest": digest(user_ids, item_ids, offsets, items, train_ends, evaluated),
    }


def _child(argv: list[str]) -> int:
    """``--child PIPELINE PATH K OUT``: run one pipeline, write its record as JSON."""
    pipeline, path, k, out = argv[0], Path(argv[1]), int(argv[2]), Path(argv[3])
    record = (run_blossom if pipeline == "blossom_hf" else run_polars)(path, k)
    out.write_text(json.dumps(record))
    return 0


def measure(pipeline: str, path: Path, k: int, workdir: Path) -> dict[str, Any]:
    """Run one pipeline in a fresh process; wall time from inside, peak RSS of the process from wait4."""
    out = workdir / f"record-{pipeline}-{os.getpid()}.json"
    cache = Path(tempfile.mkdtemp(prefix="blossom-cache-", dir=workdir))
    env = dict(os.environ, BLOSSOM_HF_CACHE=str(cache), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "blossom_hf.benchmarks.data", "--child", pipeline, str(path), str(k), str(out)]
    load_before = os.getloadavg()[0]
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(cache, ignore_errors=True)
    if process.returncode != 0:
        failure = f"exit status {process.returncode}"
        return {"pipeline": pipeline, "error": failure, "peak_rss_gb": usage.ru_maxrss / 2**20}
    record = json.loads(out.read_text())
    out.unlink()
    record.update({"pipeline": pipeline, "peak_rss_gb": usage.ru_maxrss / 2**20})  # ru_maxrss is in KiB
    record["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime  # whole process, imports included
    record["load_average_1min"] = [load_before, os.getloadavg()[0]]  # before / after: other work on the machine
    return record


def machine() -> dict[str, Any]:
    import pyarrow

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
    }
    try:
        import polars

        info["polars"] = polars.__version__
    except ImportError:
        info["polars"] = None
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blossom-hf benchmark data", description=HELP)
    parser.add_argument("--sizes", nargs="+", default=["1M", "5M"], help="log sizes, e.g. 1M 5M 20M 50M 100M")
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--k-core", type=int, default=5, help="k-core bound for users and items (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--workdir", default=None, help="where the generated logs go (default: a temp folder)")
    parser.add_argument("--keep-files", action="store_true", help="keep the generated logs")
    parser.add_argument("--output", default=None, help="append one JSON line per run to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from .synthetic import synthetic_log, write_log

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="blossom-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    logger.info("machine: %s", json.dumps(info))
    rows: list[dict[str, Any]] = []
    failed = False
    for size_text in args.sizes:
        size = parse_size(size_text)
        files = {fmt: workdir / f"synthetic-{size}-seed{args.seed}.{fmt}" for fmt in args.formats}
        if not all(f.exists() for f in files.values()):
            started = time.perf_counter()
            table = synthetic_log(size, seed=args.seed)
            for path in files.values():
                if not path.exists():
                    write_log(table, path)
            del table
            logger.info("generated %s rows in %.1f s", f"{size:,}", time.perf_counter() - started)
        for fmt, path in files.items():
            records = {name: measure(name, path, args.k_core, workdir) for name in args.pipelines}
            digests = {r.get("digest") for r in records.values()}
            same = len(digests) == 1 and None not in digests
            failed |= not same and len(records) > 1
            for name, record in records.items():
                record.update({"rows": size, "format": fmt, "k_core": args.k_core, "identical": same,
                               "file_gb": path.stat().st_size / 2**30, "machine": info})  # fmt: skip
                rows.append(record)
                logger.info(
                    "%s rows %s %-10s %6.1f s  peak RSS %5.2f GB  %s",
                    f"{size:>11,}", fmt, name, record.get("seconds", float("nan")), record["peak_rss_gb"],
                    "identical" if same else "DIFFERENT" if len(records) > 1 else "",
                )  # fmt: skip
                if args.output:
                    with open(args.output, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
        if not args.keep_files:
            for path in files.values():
                path.unlink(missing_ok=True)
    sys.stdout.write(markdown_table(rows) + "\n")
    if failed:
        logger.error("the two pipelines gave different results (see the 'identical' column)")
    return 1 if failed else 0


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (rows, format): both pipelines side by side, with the ratios."""
    by_case: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault((row["rows"], row["format"]), {})[row["pipeline"]] = row
    lines = [
        "| rows | format | users / items after 5-core | blossom_hf wall / peak RSS | polars wall / peak RSS "
        "| wall ratio | RSS ratio | identical |",
        "|---:|---|---|---|---|---:|---:|---|",
    ]
    for (size, fmt), case in sorted(by_case.items()):
        ours, theirs = case.get("blossom_hf", {}), case.get("polars", {})

        def cell(record: dict[str, Any]) -> str:
            if not record:
                return "-"
            if "error" in record:
                return f"failed ({record['error']})"
            return f"{record['seconds']:.1f} s / {record['peak_rss_gb']:.2f} GB"

        def ratio(key: str, ours: dict[str, Any] = ours, theirs: dict[str, Any] = theirs) -> str:
            if "seconds" in ours and "seconds" in theirs:
                return f"{ours[key] / theirs[key]:.2f}"
            return "-"

        first = ours if "users" in ours else theirs
        counts = f"{first.get('users', 0):,} / {first.get('items', 0):,}" if first else "-"
        identical = "yes" if ours.get("identical") else "no" if ours and theirs else "-"
        lines.append(f"| {size:,} | {fmt} | {counts} | {cell(ours)} | {cell(theirs)} | {ratio('seconds')} "
                     f"| {ratio('peak_rss_gb')} | {identical} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
