"""The options of ``blossom-hf train``, ``finetune`` and ``evaluate``: one set of dataclasses, parsed by
``transformers.HfArgumentParser``.

``train`` and ``finetune`` share :class:`DataArguments`, :class:`RunArguments`,
:class:`~blossom_hf.training.RecTrainingConfig` and :class:`RecTrainingArguments` (every
``transformers.TrainingArguments`` field, with this project's defaults from
:data:`~blossom_hf.training.TRAINING_DEFAULTS`), so their defaults cannot drift apart. Options can also come
from a YAML or JSON file (``--config run.yaml``; its keys are option names, with ``_`` or ``-``); the command
line wins over the file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from transformers import HfArgumentParser, TrainingArguments

from ..data.cli import add_data_arguments, data_spec_from_args
from ..data.formats import FORMATS
from ..data.spec import DataSpec
from ..errors import BlossomUserError
from ..training import (
    TRAINING_DEFAULTS,
    RecTrainingConfig,
    default_batch_size,
    device_training_defaults,
    validate_training_arguments,
)

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_WINDOW = 200  # BlossomRecConfig's max_history_length (the bundled model's)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class DataArguments:
    """Where the interactions are and how to read and preprocess them (``blossom_hf.data.DataSpec``)."""

    dataset: str | None = field(default=None, metadata=_help(
        "a preset (ml-1m, ml-100k, beauty, video-games; found in --data-dir or $BLOSSOM_DATA_DIR) or the path of an "
        "interaction file"))
    format: str = field(default="auto", metadata=_help(
        "file format (default: guessed from the name): movielens = ratings.dat; ml-100k = u.data; recbole = .inter; "
        "sequences = 'user item item ...' lines; user-item = 'user item' lines in time order", choices=list(FORMATS)))
    user_col: str | None = field(default=None, metadata=_help("user column (csv/tsv/parquet/jsonl)"))
    item_col: str | None = field(default=None, metadata=_help("item column (csv/tsv/parquet/jsonl)"))
    time_col: str | None = field(default=None, metadata=_help("time column: numbers or ISO date-times"))
    order_col: str | None = field(default=None, metadata=_help("explicit position of each interaction"))
    rating_col: str | None = field(default=None, metadata=_help("rating column (for --min-rating)"))
    assume_file_order: bool = field(default=False, metadata=_help(
        "the table has no time/order column: each user's rows are already in chronological order"))
    sep: str | None = field(default=None, metadata=_help("field separator for csv/tsv (default ',' / tab)"))
    encoding: str | None = field(default=None, metadata=_help("text encoding (default utf-8; latin-1 for movielens)"))
    data_dir: str | None = field(default=None, metadata=_help("folder holding the presets"))
    dedupe: Literal["none", "user-item-time", "user-item"] = field(default="none", metadata=_help(
        "drop repeated interactions, keeping the earliest"))
    min_rating: float | None = field(default=None, metadata=_help("keep only interactions rated at least this"))
    k_core: int = field(default=0, metadata=_help("iterated k-core for users and items (0 = off)"))
    user_k: int | None = field(default=None, metadata=_help("k-core bound for users only (overrides --k-core)"))
    item_k: int | None = field(default=None, metadata=_help("k-core bound for items only (overrides --k-core)"))

    def to_spec(self) -> DataSpec:
        if not self.dataset:
            raise BlossomUserError("--dataset is required: a preset name (ml-1m, ml-100k, ...) or an interaction file")
        # start from the defaults of blossom_hf.data.cli's own options, so an option added there works here too
        parser = argparse.ArgumentParser(add_help=False)
        add_data_arguments(parser, dataset_default=None)
        namespace = parser.parse_args([])
        for key, value in dataclasses.asdict(self).items():
            setattr(namespace, key, value)
        return data_spec_from_args(namespace)


@dataclass
class ModelArguments:
    """The architecture of a model trained from scratch (defaults: the paper's setting)."""

    attention_type: Literal["blossom", "full"] = field(default="blossom", metadata=_help(
        "blossom = LTIS + STIS sparse attention; full = dense causal attention (the baseline)"))
    hidden_size: int = field(default=128, metadata=_help("model width"))
    num_layers: int = field(default=2, metadata=_help("transformer layers"))
    num_heads: int = field(default=8, metadata=_help("query heads"))
    num_kv_heads: int = field(default=2, metadata=_help("key/value heads (GQA)"))
    intermediate_size: int = field(default=256, metadata=_help("FFN inner size"))
    dropout: float = field(default=0.2, metadata=_help("hidden dropout"))
    straight_through: Literal["on", "off"] = field(default="on", metadata=_help(
        "LTIS straight-through gradient to the block compressor ('off' for the ablation)"))
    model_config: list[str] = field(default_factory=list, metadata=_help(
        "any other BlossomRecConfig field as KEY=VALUE, e.g. stis_window=8 ltis_num_selected_blocks=4",
        metavar="KEY=VALUE"))


@dataclass
class RunArguments:
    """Options of a run shared by train and finetune."""

    attn_implementation: str | None = field(default=None, metadata=_help(
        "attention backend: eager, sdpa or triton (default: triton when training on a CUDA GPU with Triton, "
        "sdpa otherwise)"))
    max_history_length: int | None = field(default=None, metadata=_help(
        f"history window L (default: {DEFAULT_HISTORY_WINDOW} for a new model, the checkpoint's for finetune)"))
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata=_help(
        "auto = bf16 autocast on a GPU that supports it, else fp32 (evaluation always scores in fp32)"))
    resume: str | None = field(default=None, metadata=_help(
        "resume from the latest complete checkpoint of --output-dir (--resume alone) or from the given folder"))
    json: bool = field(default=False, metadata=_help("print the run record as JSON on stdout"))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        "start afresh in an --output-dir that holds an earlier run (its checkpoints, best model and record are "
        "deleted); without it such a folder is refused unless --resume"))


@dataclass
class RecTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` with this project's defaults (:data:`TRAINING_DEFAULTS`) and short
    aliases (``--epochs``, ``--lr``, ``--batch-size``, ``--grad-accum``, ``--num-workers``, ``--no-progress``,
    ``--cpu``). Every other field (``--report_to``, ``--lr_scheduler_type``, ``--warmup_steps``, ...) is there."""

    output_dir: str | None = field(default=None, metadata=_help("where checkpoints, best_model/ and metrics.json go"))
    num_train_epochs: float = field(default=TRAINING_DEFAULTS["num_train_epochs"], metadata=_help(
        "maximum epochs (early stopping usually ends the run before)", aliases=["--epochs"]))
    learning_rate: float = field(default=TRAINING_DEFAULTS["learning_rate"], metadata=_help(
        "learning rate (constant by default: --lr_scheduler_type)", aliases=["--lr"]))
    per_device_train_batch_size: int = field(default=0, metadata=_help(
        "training batch per device (default 0 = 256 for sasrec-style examples, 2048 for recbole)",
        aliases=["--batch-size"]))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "gradient accumulation steps", aliases=["--grad-accum"]))
    max_grad_norm: float = field(default=TRAINING_DEFAULTS["max_grad_norm"], metadata=_help(
        "gradient clipping (0 = off, as RecBole)"))
    weight_decay: float = field(default=TRAINING_DEFAULTS["weight_decay"], metadata=_help("AdamW weight decay"))
    lr_scheduler_type: str = field(default=TRAINING_DEFAULTS["lr_scheduler_type"], metadata=_help(
        "learning-rate schedule (constant, linear, cosine, ...)"))
    optim: str = field(default=TRAINING_DEFAULTS["optim"], metadata=_help("optimizer"))
    eval_strategy: str = field(default=TRAINING_DEFAULTS["eval_strategy"], metadata=_help(
        "when to rank the validation users (epoch, steps)"))
    save_strategy: str = field(default=TRAINING_DEFAULTS["save_strategy"], metadata=_help(
        "when to save a checkpoint (epoch, steps)"))
    load_best_model_at_end: bool = field(default=True, metadata=_help("reload the best checkpoint at the end"))
    greater_is_better: bool | None = field(default=True, metadata=_help("the early-stopping metric grows"))
    save_total_limit: int | None = field(default=TRAINING_DEFAULTS["save_total_limit"], metadata=_help(
        "checkpoints kept (the best one always)"))
    restore_callback_states_from_checkpoint: bool = field(default=True, metadata=_help(
        "the early-stopping counter survives a resume"))
    logging_steps: float = field(default=TRAINING_DEFAULTS["logging_steps"], metadata=_help("log the loss every N"))
    dataloader_num_workers: int = field(default=0, metadata=_help("data-loader workers", aliases=["--num-workers"]))
    remove_unused_columns: bool = field(default=False, metadata=_help("drop dataset columns the model does not take"))
    disable_tqdm: bool = field(default=False, metadata=_help("no progress bars (for logs)", aliases=["--no-progress"]))
    use_cpu: bool = field(default=False, metadata=_help("train on the CPU even if a GPU is present", aliases=["--cpu"]))


def _bare_resume(argv: list[str]) -> list[str]:
    """``--resume`` alone (last, or followed by another option) means the latest checkpoint."""
    out = []
    for position, token in enumerate(argv):
        out.append(token)
        if token == "--resume" and (position + 1 == len(argv) or argv[position + 1].startswith("--")):
            out.append("latest")
    return out


class OptionParser:
    """An ``HfArgumentParser`` over ``dataclass_types`` with ``--config FILE`` and one-line errors."""

    def __init__(self, prog: str, description: str, dataclass_types: list[type], epilog: str | None = None,
                 defaults: dict[str, Any] | None = None):  # fmt: skip
        self.dataclass_types = dataclass_types
        self.parser = HfArgumentParser(
            dataclass_types, prog=prog, description=description, epilog=epilog, allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        self.parser.add_argument("--config", metavar="FILE", help="read options from a YAML or JSON file first "
                                 "(keys are option names; the command line wins)")  # fmt: skip
        if defaults:
            self.parser.set_defaults(**defaults)
        self.parser.error = self._error  # type: ignore[method-assign]

    def _error(self, message: str) -> None:
        raise BlossomUserError(f"{self.parser.prog}: {message} (see {self.parser.prog} --help)")

    def _config_defaults(self, path: str) -> dict[str, Any]:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--config: {file} does not exist; pass a YAML or JSON file of options")
        text = file.read_text(encoding="utf-8")
        try:
            if file.suffix.lower() == ".json":
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text)
        except json.JSONDecodeError as err:
            raise BlossomUserError(f"{file}, line {err.lineno}, column {err.colno}: {err.msg}") from None
        except Exception as err:  # yaml.YAMLError
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise BlossomUserError(f"{file}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(values, dict):
            raise BlossomUserError(f"{file}: expected a mapping of option names to values, got {type(values).__name__}")
        actions = self.parser._option_string_actions
        defaults: dict[str, Any] = {}
        for key, value in values.items():
            option = "--" + str(key).lstrip("-")
            action = actions.get(option) or actions.get(option.replace("_", "-"))
            if action is None or action.dest in ("help", "config"):
                known = sorted({o.lstrip("-") for o in actions})
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise BlossomUserError(f"{file}: unknown option {key!r}{hint} (see {self.parser.prog} --help)")
            if action.nargs == "+" and not isinstance(value, list):
                value = [value]
            defaults[action.dest] = value
        return defaults

    def parse(self, argv: list[str] | None) -> tuple[Any, ...]:
        argv = _bare_resume(list(sys.argv[1:] if argv is None else argv))
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        if known.config:
            self.parser.set_defaults(**self._config_defaults(known.config))
        namespace = vars(self.parser.parse_args(argv))
        namespace.pop("config", None)
        self.namespace = namespace
        return tuple(namespace_to(cls, namespace) for cls in self.dataclass_types)


def namespace_to(cls: type, namespace: dict[str, Any]) -> Any:
    """The part of a parsed namespace that belongs to dataclass ``cls`` (not yet constructed for TrainingArguments:
    :func:`training_arguments` builds those once the device defaults are resolved)."""
    values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.init and f.name in namespace}
    if issubclass(cls, TrainingArguments):
        return SimpleNamespace(**values)
    return cls(**values)


def resolve_attn_implementation(
    requested: str | None, for_training: bool, use_cpu: bool = False, attention_type: str = "blossom"
) -> str:
    """The backend to use: the requested one, else ``triton`` for training BlossomRec on a CUDA GPU where Triton
    imports, else ``sdpa`` (which runs the dense ``attention_type="full"`` model through FlashAttention on a GPU).
    The choice is logged."""
    if requested:
        return requested
    import torch

    if attention_type == "full":
        logger.info("attention backend: sdpa (attention_type='full': dense causal attention)")
        return "sdpa"
    if for_training and torch.cuda.is_available() and not use_cpu:
        try:
            import triton  # noqa: F401

            logger.info("attention backend: triton (training on %s; --attn-implementation sdpa to change)",
                        torch.cuda.get_device_name(0))  # fmt: skip
            return "triton"
        except ImportError:
            logger.info("attention backend: sdpa (CUDA found but Triton is not installed: pip install triton)")
            return "sdpa"
    logger.info("attention backend: sdpa (%s)", "CPU" if not torch.cuda.is_available() or use_cpu else "evaluation")
    return "sdpa"


def training_arguments(raw: SimpleNamespace, rec: RecTrainingConfig, run: RunArguments) -> TrainingArguments:
    """Build the ``TrainingArguments`` from parsed values: automatic batch size, device and precision defaults,
    validation of values that would fail late."""
    import torch

    values = dict(vars(raw))
    if not values.get("output_dir"):
        raise BlossomUserError("--output-dir is required: where checkpoints, best_model/ and metrics.json go")
    cuda = torch.cuda.is_available() and not values.get("use_cpu")
    device = device_training_defaults()
    values["use_cpu"] = bool(values.get("use_cpu")) or not torch.cuda.is_available()
    values["dataloader_pin_memory"] = bool(values.get("dataloader_pin_memory", True)) and cuda
    if run.precision == "auto":
        if not values.get("bf16") and not values.get("fp16"):
            values["bf16"] = device["bf16"] and cuda
    else:
        values["bf16"], values["fp16"] = run.precision == "bf16", False
    if not values.get("per_device_train_batch_size"):
        values["per_device_train_batch_size"] = default_batch_size(rec.example_style)
    values["per_device_eval_batch_size"] = rec.eval_batch_size
    if not values.get("metric_for_best_model"):
        values["metric_for_best_model"] = rec.early_stopping_metric
    if values.get("data_seed") is None:
        values["data_seed"] = values.get("seed", TRAINING_DEFAULTS["seed"])
    if values.get("dataloader_num_workers", 0) > 0 and values.get("dataloader_persistent_workers") is False:
        values["dataloader_persistent_workers"] = True
    validate_training_arguments(SimpleNamespace(**{"max_steps": -1, **values}))
    try:
        return RecTrainingArguments(**values)
    except (ValueError, TypeError) as err:
        raise BlossomUserError(f"training options: {str(err).splitlines()[0]}") from None


def parse_model_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["stis_window=8", "rope_theta=500.0"]`` -> dict (values parsed as JSON when possible); every key must be a
    ``BlossomRecConfig`` field (a typo names the closest one)."""
    from .. import BlossomRecConfig

    known = set(BlossomRecConfig().to_dict()) | set(BlossomRecConfig.__init__.__code__.co_varnames)
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise BlossomUserError(f"--model-config expects KEY=VALUE pairs, got {pair!r} (e.g. stis_window=8)")
        key, value = (part.strip() for part in pair.split("=", 1))
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BlossomUserError(f"--model-config: {key!r} is not a BlossomRecConfig field{hint}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def recorded_command(name: str, argv: list[str] | None) -> list[str]:
    """The command line to store in ``metrics.json``."""
    return ["blossom-hf", name, *(sys.argv[1:] if argv is None else argv)]


@contextlib.contextmanager
def stdout_for_json(enabled: bool):
    """With ``--json``, anything else written to stdout during the run (the Trainer prints its logs there) goes to
    stderr, so stdout holds the JSON document only."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def main_with_json(argv: list[str] | None, runner: Any) -> int:
    """A command's ``main``: ``runner(argv) -> (record, options)``; with ``--json`` the record is the only thing on
    stdout."""
    words = list(sys.argv[1:] if argv is None else argv)
    with stdout_for_json("--json" in words):
        record, options = runner(words)
    if options.json:
        print_json(record)
    return 0


def print_json(record: Any) -> None:
    """Strict JSON of a record on stdout (a non-finite number prints as ``null``, never ``NaN``)."""
    from ..run_record import dumps_strict

    sys.stdout.write(dumps_strict(record.to_dict() if hasattr(record, "to_dict") else record) + "\n")
    sys.stdout.flush()


def setup_logging() -> None:
    """INFO logging to stderr (once); ``BLOSSOM_LOG_LEVEL`` overrides the level."""
    level = os.environ.get("BLOSSOM_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    else:
        root.setLevel(level)
