"""A complete, JSON-serialisable description of a dataset: where to read it and how to preprocess it.

Training writes it beside the model (``data_spec.json``) so evaluation can rebuild exactly the same
histories and split from the same file. The spec records the content fingerprint of the file it was
built from; loading a spec that has one checks it, so a file edited since training (even one kept at
the same size and modification time) is refused instead of silently changing the metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataChangedError
from .preprocessing import PreprocessingConfig, SequenceData, preprocess
from .sources import load_interactions

SPEC_FILE = "data_spec.json"
logger = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Arguments of :func:`~blossom_hf.data.formats.load_interactions` plus a :class:`PreprocessingConfig`.

    ``path`` is a file or a preset name (``ml-1m``, ``ml-100k``, ``beauty``, ``video-games``).
    ``fingerprint`` is the content fingerprint of the file (``xxh3-128:<hex>``) the spec was built from,
    filled in by :meth:`load`; ``None`` in a spec written by hand (nothing is checked then).
    """

    path: str
    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    order_col: str | None = None
    rating_col: str | None = None
    assume_file_order: bool = False
    sep: str | None = None
    encoding: str | None = None
    data_dir: str | None = None
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    fingerprint: str | None = None

    def load(self, item_vocabulary: list[str] | None = None, check_fingerprint: bool = True) -> SequenceData:
        """Read and preprocess; with ``item_vocabulary``, number items by it (see :func:`preprocess`).

        Raises:
            DataChangedError: the spec has a fingerprint, ``check_fingerprint`` is true, and the file's
                content is no longer the one the spec was built from.
        """
        interactions = load_interactions(
            self.path,
            self.format,
            user_col=self.user_col,
            item_col=self.item_col,
            time_col=self.time_col,
            order_col=self.order_col,
            rating_col=self.rating_col,
            assume_file_order=self.assume_file_order,
            sep=self.sep,
            encoding=self.encoding,
            data_dir=self.data_dir,
        )
        actual = interactions.fingerprint
        if self.fingerprint is not None and actual != self.fingerprint:
            if check_fingerprint:
                raise DataChangedError(
                    f"{interactions.source.get('path', self.path)} changed since this data spec was written "
                    f"(content fingerprint {actual}, the spec recorded {self.fingerprint}): use the original "
                    "file, or give the data options explicitly (e.g. --dataset) to use the new content on purpose"
                )
            logger.warning("%s changed since the data spec was written; using the new content", self.path)
        data = preprocess(interactions, self.preprocessing, item_vocabulary=item_vocabulary)
        data.metadata["data_spec"] = {**self.to_dict(), "fingerprint": actual}
        data.metadata["fingerprint"] = actual
        return data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown data spec field(s) {sorted(unknown)}")
        values["preprocessing"] = PreprocessingConfig(**values.get("preprocessing", {}))
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/data_spec.json`` (staged, then renamed)."""
        path = Path(directory) / SPEC_FILE
        staging = path.with_name(path.name + ".partial")
        staging.write_text(json.dumps(self.to_dict(), indent=2))
        staging.replace(path)
        return path

    @classmethod
    def load_file(cls, path: str | Path) -> DataSpec:
        """Read a spec from a ``data_spec.json`` file or a folder holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no data spec at {path}")
        return cls.from_dict(json.loads(path.read_text()))
