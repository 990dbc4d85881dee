"""``blossom-hf finetune``: fine-tune a pretrained BlossomRec on a new interaction log, evaluate it, export it.

The pretrained checkpoint (a folder or a Hub repo id) keeps all its encoder weights; its item embedding is
carried over to the new data's items: items shared with the pretrained vocabulary keep their embeddings, new
items start from N(0, initializer_range), and pretrained items absent from the new data are dropped (or kept
with --keep-old-items). Items are shared when their raw ids are equal, or through --mapping (a TSV/CSV of
"old raw id, new raw id" pairs) or --map-titles (a mapping built by title and year from two catalogue files,
e.g. ML-1M movies.dat and ML-100K u.item).

Writes to --output-dir what blossom-hf train writes (best_model/, metrics.json with a "finetuning" entry,
checkpoints) plus hub/ (or --export-dir): a Hub model repository with its own model card. Training options
and their defaults are those of blossom-hf train.

Examples:
  blossom-hf finetune --pretrained org/blossomrec-ml1m --dataset ml-100k \\
      --map-titles ml-1m/movies.dat ml-100k/u.item --epochs 50 --output-dir runs/ft-ml1m-to-ml100k
  blossom-hf finetune --pretrained org/blossomrec-ml1m --dataset ml-100k --from-scratch --epochs 50 \\
      --output-dir runs/scratch-ml100k
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BlossomUserError
from ..training import RecTrainingConfig
from .options import (
    DataArguments,
    OptionParser,
    RecTrainingArguments,
    RunArguments,
    main_with_json,
    recorded_command,
    resolve_attn_implementation,
    setup_logging,
    training_arguments,
)

HELP = "fine-tune a pretrained BlossomRec on your interaction log and export a Hub-ready folder"
LOGGER = logging.getLogger(__name__)


@dataclass
class FinetuneArguments:
    """The pretrained model, the item vocabulary carry-over and the export."""

    pretrained: str | None = field(default=None, metadata={"help": "pretrained checkpoint: a folder or a Hub id"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag, commit) of --pretrained"})
    mapping: str | None = field(default=None, metadata={"help": "TSV/CSV of 'old raw id, new raw id' pairs"})
    map_titles: list[str] | None = field(default=None, metadata={
        "help": "OLD_CATALOG NEW_CATALOG: build the mapping by title and year from two catalogues (movies.dat, "
        "u.item, or csv/tsv with item_id,title); the pairs are saved to OUTPUT_DIR/item_mapping.tsv"})
    keep_old_items: bool = field(default=False, metadata={"help": "keep pretrained items the new data lacks"})
    old_id_prefix: str = field(default="pretrained:", metadata={
        "help": "with a mapping and --keep-old-items: raw-id prefix of kept, unmapped pretrained items"})
    init_std: float | None = field(default=None, metadata={"help": "std of new item embeddings (default: config's)"})
    from_scratch: bool = field(default=False, metadata={
        "help": "baseline: the pretrained architecture with random weights (no transfer), same training"})
    export_dir: str | None = field(default=None, metadata={"help": "Hub folder to write (default: OUTPUT_DIR/hub)"})
    no_export: bool = field(default=False, metadata={"help": "train and evaluate only"})
    model_name: str | None = field(default=None, metadata={"help": "name in the model card"})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo id the export is meant for"})
    base_model_id: str | None = field(default=None, metadata={"help": "Hub id of the pretrained model for the card"})

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise BlossomUserError("--pretrained is required: a checkpoint folder or a Hub repo id")
        if self.mapping and self.map_titles:
            raise BlossomUserError("--mapping and --map-titles exclude each other; pass one")
        if self.map_titles is not None and len(self.map_titles) != 2:
            raise BlossomUserError(f"--map-titles takes two catalogue files (old, new), got {len(self.map_titles)}")
        if self.init_std is not None and not self.init_std > 0:
            raise BlossomUserError(f"--init-std must be positive, got {self.init_std}")


def build_parser() -> OptionParser:
    paragraphs = __doc__.split("\n\n")
    return OptionParser(
        "blossom-hf finetune", paragraphs[0].split(": ", 1)[1],
        [FinetuneArguments, DataArguments, RunArguments, RecTrainingConfig, RecTrainingArguments],
        epilog="\n\n".join(paragraphs[1:]),
    )  # fmt: skip


def check_export_dir(folder: Path) -> None:
    """Refuse, before training, an export folder that the export would refuse after it."""
    if folder.exists() and not folder.is_dir():
        raise BlossomUserError(f"--export-dir {folder} exists and is not a folder; pass a new or an export folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise BlossomUserError(
            f"--export-dir {folder} is a non-empty folder that holds no earlier export; pass a new folder"
        )


def load_pretrained(args: FinetuneArguments, attn_implementation: str | None):
    """The pretrained model, through the library classes (no remote code needed)."""
    from .. import BlossomRecModel

    kwargs: dict[str, Any] = {}
    if args.revision:
        kwargs["revision"] = args.revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = BlossomRecModel.from_pretrained(args.pretrained, **kwargs)
    if model.vocabulary is None:
        raise BlossomUserError(f"{args.pretrained} has no item_vocabulary.json: its items cannot be mapped to new data")
    return model


def build_mapping(
    args: FinetuneArguments, output_dir: Path, old_vocabulary, new_vocabulary
) -> tuple[list[tuple[str, str]] | None, dict | None]:
    from ..finetuning import read_item_mapping, title_mapping_for, write_item_mapping

    if args.mapping:
        return read_item_mapping(args.mapping), {"source": "file", "file": Path(args.mapping).name}
    if args.map_titles:
        # refuses catalogues given the wrong way round (OLD must list the pretrained model's items)
        match = title_mapping_for(*args.map_titles, old_vocabulary, new_vocabulary)
        path = write_item_mapping(match.pairs, output_dir / "item_mapping.tsv")
        LOGGER.info(
            "Title mapping: %d of %d new catalogue items matched (%.1f%%), %.1f%% of the old catalogue covered; "
            "pairs in %s", len({n for _, n in match.pairs}), match.n_new, 100 * match.match_rate,
            100 * match.old_coverage, path,
        )  # fmt: skip
        return match.pairs, {"source": "titles", **match.report()}
    return None, None


def run(argv: list[str] | None = None):
    """Parse ``argv``, fine-tune, export; return the :class:`~blossom_hf.run_record.RunRecord`."""
    return _run(argv)[0]


def _run(argv: list[str] | None):
    args, data_args, run_args, rec, raw = build_parser().parse(argv)
    setup_logging()
    import torch

    from ..finetuning import remap_item_vocabulary
    from ..hub import CardOptions, export_hub_folder, finetuning_section
    from ..training import run_training

    training_args = training_arguments(raw, rec, run_args)
    output_dir = Path(training_args.output_dir)
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / "hub"
    if not args.no_export:
        check_export_dir(export_dir)
    if not data_args.dataset:
        raise BlossomUserError("--dataset is required: a preset name or an interaction file")
    spec = data_args.to_spec()
    pretrained = load_pretrained(args, run_args.attn_implementation)
    attn = resolve_attn_implementation(run_args.attn_implementation, True, training_args.use_cpu,
                                       pretrained.config.attention_type)  # fmt: skip
    if pretrained.config._attn_implementation != attn:
        pretrained.set_attn_implementation(attn)
    data = spec.load()
    output_dir.mkdir(parents=True, exist_ok=True)
    new_vocabulary = data.item_vocabulary()
    mapping, mapping_info = build_mapping(args, output_dir, pretrained.vocabulary, new_vocabulary)

    if args.from_scratch:
        torch.manual_seed(training_args.seed)
        config = copy.deepcopy(pretrained.config)
        config.vocab_size = len(new_vocabulary) + 1
        model = type(pretrained)(config)
        model.vocabulary = new_vocabulary
        finetuning: dict[str, Any] = {"base_model": args.pretrained, "from_scratch": True,
                                      "note": "the pretrained architecture with random weights (no transfer)"}
    else:
        model, report = remap_item_vocabulary(
            pretrained, new_vocabulary, mapping, keep_old=args.keep_old_items,
            init_std=args.init_std, seed=training_args.seed, old_id_prefix=args.old_id_prefix,
        )  # fmt: skip
        data.item_ids.extend(str(raw) for raw in report.appended_ids)
        if data.item_vocabulary() != model.vocabulary:
            raise RuntimeError("internal error: the data's item numbering differs from the remapped vocabulary")
        finetuning = {"base_model": args.pretrained, "from_scratch": False, "keep_old_items": args.keep_old_items,
                      "vocabulary": report.to_dict(), "mapping": mapping_info}  # fmt: skip
    if run_args.max_history_length:
        if run_args.max_history_length < 1:
            raise BlossomUserError(f"--max-history-length must be >= 1, got {run_args.max_history_length}")
        model.config.max_history_length = run_args.max_history_length
    del pretrained

    resume = run_args.resume or training_args.resume_from_checkpoint
    record = run_training(data, model, output_dir, rec, training_args, command=recorded_command("finetune", argv),
                          resume_from_checkpoint=True if resume == "latest" else resume,
                          extra_record={"finetuning": finetuning},
                          overwrite_output_dir=run_args.overwrite_output_dir)  # fmt: skip

    if not args.no_export and training_args.process_index == 0:
        base_id = args.base_model_id or (args.pretrained if not Path(args.pretrained).exists() else None)
        options = CardOptions(
            model_name=args.model_name or (export_dir if args.export_dir else output_dir).resolve().name,
            repo_id=args.repo_id,
            base_model=None if args.from_scratch else base_id,
            extra_sections={"Fine-tuning": finetuning_section(finetuning)},
            tags=("fine-tuned",) if not args.from_scratch else (),
        )
        export_hub_folder(model, export_dir, record, card_options=options, overwrite=True)
        LOGGER.info("Hub folder: %s", export_dir)
    return record, run_args


def main(argv: list[str] | None = None) -> int:
    return main_with_json(argv, _run)
