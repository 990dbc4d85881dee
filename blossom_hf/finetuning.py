"""Fine-tuning a pretrained BlossomRec on a new interaction log: carry the model over to a new item vocabulary.

The encoder (attention, FFN, norms) does not depend on the items, so all of it is kept. Only the tied item
embedding is rebuilt for the new vocabulary:

* an item the new data shares with the pretrained vocabulary keeps its embedding row;
* a new item gets a fresh ``N(0, initializer_range)`` row;
* a pretrained item absent from the new data is dropped, or kept (``keep_old=True``) so the model can
  still recommend it.

Items are "shared" when their raw ids are equal, or, for catalogues that name the same items differently,
through a mapping of (old raw id, new raw id) pairs -- e.g. built by title and year with
:func:`blossom_hf.catalogs.build_title_mapping` (ML-1M ``movies.dat`` vs. ML-100K ``u.item``).
An old id may map to several new ids (a catalogue that lists one film twice); a new id may come from
only one old id.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .vocabulary import ItemVocabulary

logger = logging.getLogger(__name__)

MappingPairs = Iterable[tuple[Any, Any]] | Mapping[Any, Any]
_HEADER_WORDS = {"old", "new", "old_id", "new_id", "old_item_id", "new_item_id", "source", "target"}


class VocabularyMappingError(ValueError):
    """A mapping file or mapping that cannot be used (the message names the file/line or the ids)."""


@dataclass
class VocabularyRemapReport:
    """What :func:`remap_item_vocabulary` did (also written into the fine-tuned model's metrics and card).

    Attributes:
        old_items: items of the pretrained vocabulary.
        new_items: items of the new data.
        shared: new items whose embedding came from a pretrained item.
        initialised: new items with a fresh embedding.
        old_kept: pretrained items absent from the new data that were kept (``keep_old``).
        old_dropped: pretrained items absent from the new data that were dropped.
        final_items: items of the fine-tuned vocabulary (``new_items + old_kept``).
        mapping: ``"identity"`` (equal raw ids) or ``"file"``; with a mapping, how many pairs it had and how
            many could not be used (an id outside the old vocabulary, or a new id absent from the new data).
        appended_ids: raw ids given to the kept pretrained items (appended after the new items).
        init_std: std of the fresh rows.
    """

    old_items: int
    new_items: int
    shared: int
    initialised: int
    old_kept: int
    old_dropped: int
    final_items: int
    mapping: str = "identity"
    mapping_pairs: int | None = None
    mapping_unused_old: int = 0
    mapping_unused_new: int = 0
    init_std: float = 0.02
    appended_ids: list[Any] = field(default_factory=list, repr=False)

    @property
    def shared_fraction(self) -> float:
        """Fraction of the new items that start from a pretrained embedding."""
        return self.shared / self.new_items if self.new_items else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("appended_ids")
        values["shared_fraction"] = round(self.shared_fraction, 6)
        return values

    def summary(self) -> str:
        mapping = self.mapping if self.mapping_pairs is None else (
            f"{self.mapping} ({self.mapping_pairs} pairs, {self.mapping_unused_old} with an unknown old id, "
            f"{self.mapping_unused_new} whose new id is not in the data)"
        )  # fmt: skip
        return (
            f"{self.new_items} new items: {self.shared} shared with the pretrained vocabulary "
            f"({100 * self.shared_fraction:.1f}%, embeddings kept), "
            f"{self.initialised} initialised N(0, {self.init_std}); "
            f"{self.old_items - (self.old_kept + self.old_dropped)} of {self.old_items} pretrained items reused, "
            f"{self.old_kept} kept without data, {self.old_dropped} dropped; mapping: {mapping}; "
            f"final vocabulary {self.final_items} items"
        )


# --------------------------------------------------------------------------------------------------
# mapping files


def read_item_mapping(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(old raw id, new raw id)`` pairs from a two-column TSV or CSV file.

    The separator is a tab if the first data line has one, else a comma. An optional header (``old_id``,
    ``new_id`` or similar words), blank lines and ``#`` comments are skipped; extra columns are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item mapping file {path} does not exist")
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8", newline="") as handle:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, start=1)]
    content = [(n, line) for n, line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not content:
        raise VocabularyMappingError(f"item mapping file {path} is empty")
    delimiter = "\t" if "\t" in content[0][1] else ","
    for index, (line_no, line) in enumerate(content):
        fields = next(csv.reader([line], delimiter=delimiter))
        if len(fields) < 2:
            raise VocabularyMappingError(
                f"{path}, line {line_no}: expected two {'tab' if delimiter == chr(9) else 'comma'}-separated "
                f"columns (old raw id, new raw id), got {line[:80]!r}"
            )
        old, new = fields[0].strip(), fields[1].strip()
        if index == 0 and old.lower() in _HEADER_WORDS and new.lower() in _HEADER_WORDS:
            continue
        if not old or not new:
            raise VocabularyMappingError(f"{path}, line {line_no}: empty id in {line[:80]!r}")
        pairs.append((old, new))
    if not pairs:
        raise VocabularyMappingError(f"item mapping file {path} has a header but no (old raw id, new raw id) pairs")
    logger.info("Read %d item id pairs from %s", len(pairs), path)
    return pairs


def write_item_mapping(pairs: Iterable[tuple[Any, Any]], path: str | os.PathLike) -> Path:
    """Write ``(old, new)`` pairs as a TSV with an ``old_id<TAB>new_id`` header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["old_id", "new_id"])
        for old, new in pairs:
            writer.writerow([old, new])
    return path


def _new_to_old(mapping: MappingPairs) -> tuple[dict[str, str], int]:
    pairs = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    new_to_old: dict[str, str] = {}
    for old, new in pairs:
        old, new = str(old), str(new)
        previous = new_to_old.get(new)
        if previous is not None and previous != old:
            raise VocabularyMappingError(
                f"new item {new!r} is mapped from two pretrained items ({previous!r} and {old!r}); "
                "a new item can take only one embedding"
            )
        new_to_old[new] = old
    return new_to_old, len(pairs)


def check_mapping_direction(new_to_old: Mapping[str, str], old_ids: set[str], new_ids: set[str]) -> None:
    """Refuse a mapping whose two columns are the wrong way round, or that fits neither vocabulary.

    A mapping's old ids must name pretrained items and its new ids items of the new data. When the reversed
    pairs fit the two vocabularies clearly better (e.g. ``--map-titles NEW_CATALOG OLD_CATALOG``), or no pair
    fits at all, training would start from fresh embeddings for (nearly) every item without a word.
    """
    if not new_to_old:
        raise VocabularyMappingError("the item mapping holds no pairs")
    pairs = list(new_to_old.items())

    def fit(olds: set[str], news: set[str], reverse: bool) -> float:
        hits = [(old in olds, new in news) for new, old in ((o, n) if reverse else (n, o) for n, o in pairs)]
        return min(sum(h[0] for h in hits), sum(h[1] for h in hits)) / len(hits)

    direct, reverse = fit(old_ids, new_ids, False), fit(old_ids, new_ids, True)
    if reverse >= 0.5 and reverse - direct >= 0.25:
        raise VocabularyMappingError(
            f"the item mapping looks reversed: {100 * direct:.0f}% of its pairs fit (old id in the pretrained "
            f"vocabulary, new id in the new data) but {100 * reverse:.0f}% fit the other way round; give the "
            "pretrained model's catalogue first (--map-titles OLD_CATALOG NEW_CATALOG) or swap the mapping's columns"
        )
    if direct == 0:
        raise VocabularyMappingError(
            f"no pair of the item mapping ({len(pairs)} pairs) links a pretrained item to an item of the new data; "
            "check that the old ids are the pretrained model's raw ids and the new ids those of the new data"
        )


def check_catalog_direction(
    old_titles: Mapping[str, str], new_titles: Mapping[str, str], old_vocabulary: ItemVocabulary,
    new_vocabulary: ItemVocabulary, names: tuple[Any, Any] = ("the old catalogue", "the new catalogue"),
) -> None:
    """Refuse two catalogues given the wrong way round: the old one must list the pretrained model's items,
    the new one the new data's (raw ids of the files as text). Low coverage without a swap is logged."""

    def cover(titles: Mapping[str, str], vocabulary: ItemVocabulary) -> float:
        ids = [str(r) for r in vocabulary.raw_ids]
        return sum(i in titles for i in ids) / len(ids) if ids else 0.0

    old_fit, new_fit = cover(old_titles, old_vocabulary), cover(new_titles, new_vocabulary)
    old_swapped, new_swapped = cover(new_titles, old_vocabulary), cover(old_titles, new_vocabulary)
    direct, reverse = min(old_fit, new_fit), min(old_swapped, new_swapped)
    if reverse >= 0.5 and reverse - direct >= 0.25:
        raise VocabularyMappingError(
            f"the catalogues look swapped: {names[0]} lists {100 * old_fit:.0f}% of the pretrained model's items "
            f"and {names[1]} {100 * new_fit:.0f}% of the new data's, but the other way round they list "
            f"{100 * old_swapped:.0f}% and {100 * new_swapped:.0f}%; give the pretrained model's catalogue first "
            "(--map-titles OLD_CATALOG NEW_CATALOG)"
        )
    if direct < 0.5:
        logger.warning("%s lists %.0f%% of the pretrained items and %s %.0f%% of the new data's items: most items "
                       "cannot be matched by title", names[0], 100 * old_fit, names[1], 100 * new_fit)  # fmt: skip


def title_mapping_for(
    old_catalog: str | os.PathLike, new_catalog: str | os.PathLike, old_vocabulary: ItemVocabulary,
    new_vocabulary: ItemVocabulary, old_format: str = "auto", new_format: str = "auto",
):
    """:func:`blossom_hf.catalogs.build_title_mapping` after :func:`check_catalog_direction` (what
    ``--map-titles OLD NEW`` should call): a :class:`~blossom_hf.catalogs.TitleMatch` of ``(old, new)`` pairs."""
    from .catalogs import match_titles, read_item_titles

    old_titles = read_item_titles(old_catalog, old_format)
    new_titles = read_item_titles(new_catalog, new_format)
    check_catalog_direction(old_titles, new_titles, old_vocabulary, new_vocabulary, (old_catalog, new_catalog))
    return match_titles(old_titles, new_titles)


# --------------------------------------------------------------------------------------------------
# remapping


def remap_item_vocabulary(
    model: torch.nn.Module,
    new_vocabulary: ItemVocabulary,
    mapping: MappingPairs | None = None,
    keep_old: bool = False,
    *,
    init_std: float | None = None,
    seed: int = 0,
    old_id_prefix: str = "pretrained:",
) -> tuple[torch.nn.Module, VocabularyRemapReport]:
    """A copy of ``model`` over ``new_vocabulary`` (plus, with ``keep_old``, the unused pretrained items).

    Args:
        model: a pretrained ``BlossomRecModel`` with ``model.vocabulary``.
        new_vocabulary: the new data's items (``SequenceData.item_vocabulary()``); they keep their order and
            indices ``1..N``, so data already numbered by it need not be renumbered.
        mapping: ``(old raw id, new raw id)`` pairs (or an ``{old: new}`` dict) for catalogues that name
            items differently; default: equal raw ids are the same item.
        keep_old: keep the pretrained items the new data lacks, appended after the new items. Without a
            mapping they keep their raw ids; with one, an old item mapped to a new id keeps that new id and
            an unmapped one is renamed ``old_id_prefix + old id`` (the two catalogues' ids may collide).
        init_std: std of the fresh rows (default ``config.initializer_range``).
        seed: seed of the fresh rows.

    Returns:
        ``(new_model, report)``; ``new_model.vocabulary`` is the final vocabulary and every weight but the
        item embedding equals ``model``'s. ``model`` itself is not changed.
    """
    old_vocabulary = getattr(model, "vocabulary", None)
    if old_vocabulary is None:
        raise VocabularyMappingError("the pretrained model has no item vocabulary (model.vocabulary is None)")
    if len(new_vocabulary) == 0:
        raise VocabularyMappingError("the new vocabulary is empty")
    old_raw = [str(r) for r in old_vocabulary.raw_ids]
    old_index = {raw: i + 1 for i, raw in enumerate(old_raw)}
    new_raw = [str(r) for r in new_vocabulary.raw_ids]
    new_set = set(new_raw)

    report_mapping = "identity"
    pairs_count: int | None = None
    unused_old = unused_new = 0
    if mapping is None:
        new_to_old = {raw: raw for raw in new_raw if raw in old_index}
    else:
        report_mapping = "file"
        all_pairs, pairs_count = _new_to_old(mapping)
        check_mapping_direction(all_pairs, set(old_index), new_set)
        unused_old = sum(1 for old in all_pairs.values() if old not in old_index)
        unused_new = sum(1 for new in all_pairs if new not in new_set)
        new_to_old = {new: old for new, old in all_pairs.items() if old in old_index and new in new_set}

    covered = set(new_to_old.values())
    appended: list[Any] = []
    appended_sources: list[int] = []
    if keep_old:
        names = set(new_raw)
        old_to_new: dict[str, list[str]] = {}
        if mapping is not None:
            for new, old in all_pairs.items():
                old_to_new.setdefault(old, []).append(new)
        for raw in old_raw:
            if raw in covered:
                continue
            if mapping is None:
                name = raw
            else:
                targets = [n for n in old_to_new.get(raw, []) if n not in names]
                name = targets[0] if targets else old_id_prefix + raw
            if name in names:
                raise VocabularyMappingError(f"kept pretrained item {raw!r} would be named {name!r}, which is taken")
            names.add(name)
            appended.append(name)
            appended_sources.append(old_index[raw])
    final_raw: list[Any] = list(new_vocabulary.raw_ids) + [_typed(name, new_vocabulary) for name in appended]
    final_vocabulary = ItemVocabulary(final_raw)

    config = copy.deepcopy(model.config)
    config.vocab_size = len(final_vocabulary) + 1
    if "auto_map" in getattr(config, "__dict__", {}):
        del config.auto_map  # save_pretrained writes it anew (register_for_auto_class)
    new_model = type(model)(config)
    state = {k: v for k, v in model.state_dict().items() if k != "item_embeddings.weight"}
    missing, unexpected = new_model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"item_embeddings.weight"}:
        raise RuntimeError(f"encoder weights did not carry over: missing {missing}, unexpected {unexpected}")

    old_weight = model.item_embeddings.weight.detach()
    std = float(init_std if init_std is not None else getattr(config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(config.vocab_size, old_weight.shape[1], generator=generator, dtype=torch.float32) * std
    weight = weight.to(dtype=old_weight.dtype, device=old_weight.device)
    weight[0] = old_weight[0]
    targets = [i + 1 for i, raw in enumerate(new_raw) if raw in new_to_old]
    sources = [old_index[new_to_old[new_raw[i - 1]]] for i in targets]
    offset = len(new_raw) + 1
    targets += list(range(offset, offset + len(appended)))
    sources += appended_sources
    if targets:
        weight[torch.tensor(targets)] = old_weight[torch.tensor(sources, device=old_weight.device)]
    with torch.no_grad():
        new_model.item_embeddings.weight.copy_(weight)
    new_model.to(old_weight.device)
    new_model.vocabulary = final_vocabulary
    new_model.train(model.training)

    report = VocabularyRemapReport(
        old_items=len(old_raw),
        new_items=len(new_raw),
        shared=len(new_to_old),
        initialised=len(new_raw) - len(new_to_old),
        old_kept=len(appended),
        old_dropped=len(old_raw) - len(covered) - len(appended),
        final_items=len(final_vocabulary),
        mapping=report_mapping,
        mapping_pairs=pairs_count,
        mapping_unused_old=unused_old,
        mapping_unused_new=unused_new,
        init_std=std,
        appended_ids=[_typed(name, new_vocabulary) for name in appended],
    )
    logger.info("Vocabulary remap: %s", report.summary())
    return new_model, report


def _typed(name: str, vocabulary: ItemVocabulary) -> Any:
    """Keep integer raw ids integers when the new vocabulary's are."""
    if vocabulary.id_type == "int" and name.lstrip("-").isdigit():
        return int(name)
    return name


__all__ = [
    "VocabularyMappingError",
    "check_catalog_direction",
    "check_mapping_direction",
    "title_mapping_for",
    "VocabularyRemapReport",
    "read_item_mapping",
    "remap_item_vocabulary",
    "write_item_mapping",
]
