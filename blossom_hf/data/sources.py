"""Every way interactions come in, turned into the same canonical :class:`~blossom_hf.data.formats.Interactions`.

:func:`load_interactions` is the one entry point; it accepts

* a **preset** name (``ml-1m``, ``ml-100k``, ``beauty``, ``video-games``): looked for in ``data_dir``,
  ``$BLOSSOM_DATA_DIR`` and the user cache, downloaded from its official source when missing
  (:mod:`blossom_hf.data.presets`, :mod:`blossom_hf.data.download`);
* a local **file** in any format of :mod:`blossom_hf.data.formats` (``ratings.dat``, CSV, Parquet, ...);
* a local **folder** of data files, or a **Hub dataset id** (``owner/name``, ``owner/name@revision``), read
  with ``datasets.load_dataset`` (``split`` picks the split; default ``train``);
* an ``hf://`` **path** to one file on the Hub (``hf://datasets/owner/name[@revision]/path/file.csv``; model
  and Space repositories without the ``datasets/`` prefix as in ``huggingface_hub.HfFileSystem``),
  fetched into the Hugging Face cache and read like a local file;
* a ``pandas.DataFrame`` (:func:`from_pandas`), a ``datasets.Dataset`` / ``DatasetDict`` (:func:`from_dataset`)
  or a ``pyarrow.Table`` (:func:`from_arrow`) with the user's column names.

Tables are checked exactly like files: the same column options (``user_col``, ``item_col``, ``time_col`` and/or
``order_col``, ``rating_col``, ``assume_file_order``), the same one-line errors (the "line" of a table row is
its 1-based position), the same canonical columns, so :func:`~blossom_hf.data.preprocessing.preprocess` and
everything after it cannot tell where the data came from.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa

from . import formats, table_readers
from .errors import InteractionDataError, UnknownColumnError
from .formats import Interactions
from .presets import PRESETS, find_preset, resolve_preset

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)

_COLUMN_OPTIONS = ("user_col", "item_col", "time_col", "order_col", "rating_col")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_HF_PATH = re.compile(r"^hf://(?:(datasets|spaces)/)?([^/@]+/[^/@]+)(?:@([^/]+))?/(.+)$")
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl", ".dat", ".data", ".inter", ".txt", ".gz", ".zst")


def from_arrow(
    table: pa.Table,
    *,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    order_col: str | None = None,
    rating_col: str | None = None,
    assume_file_order: bool = False,
    name: str = "<table>",
    source: dict[str, Any] | None = None,
) -> Interactions:
    """Canonical interactions from an Arrow table with named columns (the core of :func:`from_pandas` and
    :func:`from_dataset`).

    Args:
        table: one row per interaction.
        user_col, item_col: the columns holding user and item ids (any type; integers stay exact).
        time_col: interaction time (numbers, Arrow timestamps/dates, or ISO 8601 text).
        order_col: explicit position of each interaction in its user's history.
        rating_col: optional rating (only needed for a rating threshold).
        assume_file_order: no time/order column: each user's rows are already in chronological order.
        name: how the table is called in error messages.
        source: extra fields for :attr:`Interactions.source`.
    """
    available = [str(c) for c in table.column_names]
    label = Path(name)
    wanted = table_readers._wanted_columns(
        label, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order
    )
    numbers = np.arange(1, table.num_rows + 1, dtype=np.int64)
    raw = {canonical: table.column(column) for canonical, column in wanted.items()}
    canonical, described, first_line, removed = table_readers._canonical_columns(
        label, raw, numbers, assume_file_order, order_col, wanted, 1
    )
    record = {
        "path": name,
        "format": "table",
        **described,
        "order": "row order" if assume_file_order and order_col is None else None,
        **(source or {}),
    }
    logger.info("Read %d interactions from %s", canonical.num_rows, name)
    return Interactions(canonical, record, first_line=first_line, removed_rows=removed)


def from_pandas(
    frame: pandas.DataFrame,
    *,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    order_col: str | None = None,
    rating_col: str | None = None,
    assume_file_order: bool = False,
) -> Interactions:
    """Canonical interactions from a ``pandas.DataFrame`` (one row per interaction) with your column names.

    Example::

        interactions = from_pandas(logs, user_col="customer", item_col="sku", time_col="ts")
        data = preprocess(interactions, PreprocessingConfig(user_k=5, item_k=5))

    The "line" in error messages is the 1-based row position (not the index label). The index is ignored;
    pass ``df.reset_index()`` to use it as a column.
    """
    import pandas

    if not isinstance(frame, pandas.DataFrame):
        raise TypeError(f"from_pandas expects a pandas.DataFrame, got {type(frame).__name__}")
    named = {k: v for k, v in zip(_COLUMN_OPTIONS, (user_col, item_col, time_col, order_col, rating_col),
                                   strict=True) if v is not None}  # fmt: skip
    available = [str(c) for c in frame.columns]
    for option, column in named.items():
        if column not in available:
            raise UnknownColumnError("DataFrame", column, option.removesuffix("_col"), available)
    if len(set(available)) != len(available):
        raise InteractionDataError("DataFrame: column names repeat; give every column a distinct name")
    used = list(dict.fromkeys(named.values()))
    subset = frame.set_axis(available, axis=1)[used]
    try:
        table = pa.Table.from_pandas(subset, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InteractionDataError(f"DataFrame: a column mixes types Arrow cannot store together ({error})") from None
    return from_arrow(table, user_col=user_col, item_col=item_col, time_col=time_col, order_col=order_col,
                      rating_col=rating_col, assume_file_order=assume_file_order, name="DataFrame",
                      source={"path": "pandas.DataFrame"})  # fmt: skip


def from_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    *,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    order_col: str | None = None,
    rating_col: str | None = None,
    assume_file_order: bool = False,
    split: str | None = None,
    name: str | None = None,
) -> Interactions:
    """Canonical interactions from a ``datasets.Dataset`` (or one split of a ``DatasetDict``) with your column
    names. Rows selected or shuffled with ``select``/``shuffle`` are read in the dataset's current order."""
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            if len(dataset) != 1:
                raise InteractionDataError(
                    f"the DatasetDict has splits {', '.join(dataset)}; pick one with split=..."
                )
            split = next(iter(dataset))
        if split not in dataset:
            raise InteractionDataError(f"no split {split!r} in the DatasetDict; splits: {', '.join(dataset)}")
        dataset = dataset[split]
    if isinstance(dataset, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise InteractionDataError("an IterableDataset cannot be preprocessed; load it with streaming=False")
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"from_dataset expects a datasets.Dataset, got {type(dataset).__name__}")
    label = name or "Dataset"
    named = [c for c in (user_col, item_col, time_col, order_col, rating_col) if c is not None]
    for option, column in zip(_COLUMN_OPTIONS, (user_col, item_col, time_col, order_col, rating_col), strict=True):
        if column is not None and column not in dataset.column_names:
            raise UnknownColumnError(label, column, option.removesuffix("_col"), dataset.column_names)
    table = dataset.select_columns(list(dict.fromkeys(named))).with_format("arrow")[:]
    return from_arrow(table, user_col=user_col, item_col=item_col, time_col=time_col, order_col=order_col,
                      rating_col=rating_col, assume_file_order=assume_file_order, name=label,
                      source={"path": label, "split": split})  # fmt: skip


def load_interactions(
    source: Any,
    format: str = "auto",
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    order_col: str | None = None,
    rating_col: str | None = None,
    assume_file_order: bool = False,
    sep: str | None = None,
    encoding: str | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    download: bool = True,
    accept_license: bool | None = None,
    split: str | None = None,
) -> Interactions:
    """Read interactions from any source listed in the module doc into canonical columns.

    The file options (``format``, ``sep``, ``encoding``) and column options are those of
    :func:`blossom_hf.data.formats.load_interactions`; ``data_dir``, ``download`` and ``accept_license`` apply
    to presets (:func:`~blossom_hf.data.presets.resolve_preset`), ``split`` to Hub datasets, folders and
    ``DatasetDict`` objects.
    """
    columns = dict(user_col=user_col, item_col=item_col, time_col=time_col, order_col=order_col,
                   rating_col=rating_col, assume_file_order=assume_file_order)  # fmt: skip
    if isinstance(source, pa.Table):
        return from_arrow(source, **columns)
    if isinstance(source, datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset):
        return from_dataset(source, split=split, **columns)
    if type(source).__name__ == "DataFrame" and type(source).__module__.startswith("pandas"):
        return from_pandas(source, **columns)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"cannot read interactions from a {type(source).__name__}; pass a path, a preset name, a Hub dataset "
            "id, an hf:// path, a pandas.DataFrame or a datasets.Dataset"
        )
    text = os.fspath(source)
    file_options = dict(columns, sep=sep, encoding=encoding, cache_dir=cache_dir)
    if text in PRESETS and not Path(text).exists():
        return _load_preset(text, format, file_options, data_dir, download, accept_license)
    if text.startswith("hf://"):
        local = _fetch_hub_file(text)
        interactions = formats.load_interactions(local, format, **file_options)
        interactions.source.update({"path": text, "local_copy": str(local)})
        return interactions
    path = Path(text).expanduser()
    if path.is_file() or (path.is_dir() and format in ("auto", "parquet") and table_readers.part_files(path)):
        # a folder of Parquet part files (as Spark/polars/Ray write a table or per-user sequences) is one file to
        # the readers; any other folder is a `datasets` folder
        return formats.load_interactions(path, format, **file_options)
    if path.is_dir() or (_HUB_ID.match(text) and not text.lower().endswith(_TABLE_SUFFIXES)):
        return _load_with_datasets(text, path.is_dir(), split, cache_dir, columns)
    raise FileNotFoundError(
        f"interaction file {text} does not exist (nor is it a folder, a Hub dataset id owner/name or an hf:// path; "
        f"known presets: {', '.join(PRESETS)})"
    )


# --------------------------------------------------------------------------------------------------


def _load_preset(
    name: str,
    format: str,
    file_options: dict[str, Any],
    data_dir: str | os.PathLike | None,
    download: bool,
    accept_license: bool | None,
) -> Interactions:
    found = resolve_preset(name, data_dir, download=download, accept_license=accept_license)
    options = dict(file_options)
    for key, value in found.options.items():
        if options.get(key) is None:
            options[key] = value
    interactions = formats.load_interactions(found.path, found.format if format == "auto" else format, **options)
    interactions.source.update({"preset": name, "layout": found.layout.relative_path, "found_in": found.origin})
    return interactions


def _load_with_datasets(
    text: str, is_folder: bool, split: str | None, cache_dir: str | None, columns: dict[str, Any]
) -> Interactions:
    repo, _, revision = text.partition("@") if not is_folder else (text, "", "")
    split = split or "train"
    if is_folder:
        for name in PRESETS:
            found = find_preset(name, text)
            if found is not None and found.origin == "--data-dir":
                raise InteractionDataError(
                    f"{text} is a folder holding the {name!r} dataset; read it as a preset: --dataset {name} "
                    f"--data-dir {text} (data_dir=...), or name the file itself"
                )
    if columns["user_col"] is None or columns["item_col"] is None:
        raise InteractionDataError(
            f"{text}: reading a Hub dataset or a folder needs user_col and item_col (and time_col, order_col or "
            "assume_file_order) naming its columns"
        )
    try:
        loaded = datasets.load_dataset(repo, split=split, revision=revision or None, cache_dir=cache_dir)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{text}: no such Hub dataset or data folder ({_first_line(error)})") from None
    except ValueError as error:  # unknown split, no data files, ...
        raise InteractionDataError(f"{text}: {_first_line(error)}") from None
    except ConnectionError as error:
        raise InteractionDataError(
            f"{text}: the Hub cannot be reached and the dataset is not in the datasets cache ({_first_line(error)}); "
            "connect, or download it once while online"
        ) from None
    interactions = from_dataset(loaded, name=text, **columns)
    interactions.source.update({"path": text, "split": split, "revision": revision or None,
                                "format": "folder" if is_folder else "hub"})  # fmt: skip
    return interactions


def _fetch_hub_file(url: str) -> Path:
    """A local copy (in the Hugging Face cache) of one ``hf://`` file."""
    match = _HF_PATH.match(url)
    if not match:
        raise InteractionDataError(
            f"{url}: expected hf://datasets/<owner>/<name>[@revision]/<path/to/file> (or hf://<owner>/<name>/... for "
            "a model repository)"
        )
    kind, repo_id, revision, filename = match.groups()
    repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[kind]
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision))
    except EntryNotFoundError:
        raise FileNotFoundError(f"{url}: no file {filename!r} in the {repo_type} repository {repo_id}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{url}: no {repo_type} repository {repo_id} (or it is private: log in)") from None
    except LocalEntryNotFoundError as error:
        raise InteractionDataError(
            f"{url}: offline and not in the Hugging Face cache ({_first_line(error)}); connect, or fetch it once online"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["from_arrow", "from_dataset", "from_pandas", "load_interactions"]
