"""Command-line options for choosing and reading a dataset, shared by ``scripts/train.py`` and
``scripts/evaluate.py``."""

from __future__ import annotations

import argparse

from .formats import FORMATS
from .preprocessing import PreprocessingConfig
from .spec import DataSpec


def add_data_arguments(parser: argparse.ArgumentParser, dataset_default: str | None) -> None:
    """Options shared with scripts/evaluate.py: where the interactions are and how to read them."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=dataset_default,
        help="a preset (ml-1m, ml-100k, beauty, video-games; read from ../shared/data or $BLOSSOM_DATA_DIR) "
        "or a path to an interaction file" + (f" (default: {dataset_default})" if dataset_default else ""),
    )
    group.add_argument(
        "--format",
        default="auto",
        choices=list(FORMATS),
        help="file format (default: guessed from the name). movielens = ratings.dat 'u::i::r::t'; ml-100k = u.data; "
        "recbole = .inter atomic file; sequences = one 'user item item ...' line per user; "
        "user-item = 'user item' lines in chronological order",
    )
    group.add_argument("--user-col", help="user column (csv/tsv/parquet/jsonl; recbole default user_id)")
    group.add_argument("--item-col", help="item column (csv/tsv/parquet/jsonl; recbole default item_id)")
    group.add_argument("--time-col", help="time column: numbers, or ISO date-times; ties keep file order")
    group.add_argument("--order-col", help="explicit position of each interaction in its user's history")
    group.add_argument("--rating-col", help="rating column (only needed with --min-rating)")
    group.add_argument(
        "--assume-file-order",
        action="store_true",
        help="the table has no time/order column: each user's rows are already in chronological order",
    )
    group.add_argument("--sep", help="field separator for csv/tsv (default ',' / tab)")
    group.add_argument("--encoding", help="text encoding (default utf-8; latin-1 for movielens)")
    group.add_argument("--data-dir", help="folder holding the presets (default ../shared/data)")
    prep = parser.add_argument_group("preprocessing (PROTOCOL.md order: dedupe, rating, k-core, time order, ids)")
    prep.add_argument(
        "--dedupe",
        default="none",
        choices=["none", "user-item-time", "user-item"],
        help="drop repeated interactions, keeping the earliest (default: none)",
    )
    prep.add_argument("--min-rating", type=float, help="keep only interactions rated at least this")
    prep.add_argument("--k-core", type=int, default=0, help="iterated k-core for users and items (default: off)")
    prep.add_argument("--user-k", type=int, help="k-core bound for users only (overrides --k-core)")
    prep.add_argument("--item-k", type=int, help="k-core bound for items only (overrides --k-core)")


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """The :class:`DataSpec` described by options added with :func:`add_data_arguments`."""
    preprocessing = PreprocessingConfig(
        dedupe=args.dedupe,
        min_rating=args.min_rating,
        user_k=args.user_k if args.user_k is not None else args.k_core,
        item_k=args.item_k if args.item_k is not None else args.k_core,
    )
    return DataSpec(
        path=args.dataset,
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        order_col=args.order_col,
        rating_col=args.rating_col,
        assume_file_order=args.assume_file_order,
        sep=args.sep,
        encoding=args.encoding,
        data_dir=args.data_dir,
        preprocessing=preprocessing,
    )
