"""Command-line options for choosing and reading a dataset, shared by the training and evaluation commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from .formats import FORMATS
from .preprocessing import PreprocessingConfig
from .presets import ACCEPT_LICENSE_ENV, DATA_DIR_ENV, PRESETS, resolve_preset
from .spec import DataSpec


def add_data_arguments(parser: argparse.ArgumentParser, dataset_default: str | None) -> None:
    """Options shared with `blossom-hf evaluate`: where the interactions are and how to read them."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=dataset_default,
        help=f"a preset ({', '.join(PRESETS)}; looked for in --data-dir, ${DATA_DIR_ENV}, then the user cache, "
        "downloaded there when missing) or a path to an interaction file"
        + (f" (default: {dataset_default})" if dataset_default else ""),
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
    group.add_argument(
        "--data-dir",
        help=f"folder searched first for the presets (then ${DATA_DIR_ENV}, then ~/.cache/blossom_hf/datasets)",
    )
    group.add_argument(
        "--accept-license",
        action="store_true",
        help=f"accept the dataset's terms, which MovieLens needs before it is downloaded (or set {ACCEPT_LICENSE_ENV})",
    )
    group.add_argument(
        "--no-download", action="store_true", help="never download a missing preset: fail with where it was looked for"
    )
    prep = parser.add_argument_group("preprocessing (docs/PROTOCOL.md order: dedupe, rating, k-core, time order, ids)")
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


def data_spec_from_args(args: argparse.Namespace, fetch: bool = True) -> DataSpec:
    """The :class:`DataSpec` described by options added with :func:`add_data_arguments`.

    With ``fetch``, a preset that is not on disk is downloaded now (``--no-download`` turns that into an
    error, ``--accept-license`` gives the consent MovieLens needs), so that loading the spec finds it.
    """
    preprocessing = PreprocessingConfig(
        dedupe=args.dedupe,
        min_rating=args.min_rating,
        user_k=args.user_k if args.user_k is not None else args.k_core,
        item_k=args.item_k if args.item_k is not None else args.k_core,
    )
    if fetch and args.dataset in PRESETS and not Path(args.dataset).exists():
        resolve_preset(
            args.dataset,
            args.data_dir,
            download=not getattr(args, "no_download", False),
            accept_license=True if getattr(args, "accept_license", False) else None,
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
