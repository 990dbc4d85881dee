"""`blossom-hf`: dispatch, one-line user errors (and --debug), options shared by train and finetune, config files,
device-aware defaults, and every bad value refused before training starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hub_testing import write_interactions

from blossom_hf import cli
from blossom_hf.commands import command_names, load_command
from blossom_hf.commands import finetune as finetune_command
from blossom_hf.commands import train as train_command
from blossom_hf.commands.options import resolve_attn_implementation, training_arguments
from blossom_hf.errors import BlossomUserError


@pytest.fixture
def csv_log(tmp_path) -> Path:
    return write_interactions(tmp_path / "log.csv", n_users=30, items=list(range(1, 31)))


def train_argv(csv_log: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(csv_log), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
            "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
            "--intermediate-size", "16", "--max-history-length", "12", "--batch-size", "16", "--no-progress",
            "--eval-protocols", "full", "uni10", "--output-dir", str(output), *extra]  # fmt: skip


def test_dispatch_help_and_unknown_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "finetune", "benchmark"):
        assert f"  {name} " in out, name
    assert {"train", "evaluate", "finetune", "benchmark"} <= set(command_names())
    assert load_command("options") is None, "the options module is not a command"
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'. Did you mean 'train'?" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_benchmark_names_a_missing_benchmark(capsys):
    assert cli.main(["benchmark", "nosuch"]) == 2
    assert "unknown benchmark 'nosuch'; choose one of gpu, cpu, data, fused_ce" in capsys.readouterr().err
    import importlib.util

    for what in ("gpu", "cpu", "data"):
        present = importlib.util.find_spec("blossom_hf.benchmarks") is not None and \
            importlib.util.find_spec(f"blossom_hf.benchmarks.{what}") is not None  # fmt: skip
        if present:
            continue  # its own --help is its business
        assert cli.main(["benchmark", what, "--help"]) == 2
        err = capsys.readouterr().err
        assert f"blossom_hf.benchmarks.{what}" in err and "not part of this installation" in err
        assert err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "--epochs must be > 0, got 0"),
        (["--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
        (["--grad-accum", "0"], "--grad-accum must be >= 1, got 0"),
        (["--sampled-negatives", "0", "--loss", "sampled"], "--sampled-negatives must be >= 1, got 0"),
        (["--ce-chunk-size", "0", "--loss", "chunked"], "--ce-chunk-size must be a positive number of items, got 0"),
        (["--early-stopping-metric", "full_ndgc@10"], "did you mean 'full_ndcg@10'?"),
        (["--early-stopping-metric", "uni100_ndcg@10"], "a protocol of --eval-protocols ['full', 'uni10']"),
        (["--model-config", "stis_windw=16"], "'stis_windw' is not a BlossomRecConfig field; did you mean 'stis_w"),
        (["--model-config", "stis_window"], "--model-config expects KEY=VALUE pairs"),
        (["--loss", "focal"], "invalid choice: 'focal'"),
        (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    ],
)
def test_bad_training_options_are_one_line_before_training(tmp_path, csv_log, capsys, extra, message):
    output = tmp_path / "run"
    status = cli.main(train_argv(csv_log, output, *extra))
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not output.exists() or not any(output.iterdir()), "nothing is trained or written"


def test_debug_shows_the_traceback(tmp_path, csv_log):
    with pytest.raises(BlossomUserError, match="--epochs must be > 0"):
        cli.main(["--debug", *train_argv(csv_log, tmp_path / "run", "--epochs", "0")])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-users", "0"], "--max-users must be >= 1, got 0"),
        (["--batch-size", "-5"], "--batch-size must be >= 1 users, got -5"),
        (["--protocols", "uni0"], "--protocols:"),
        (["--splits", "train"], "--splits: ['train'] unknown"),
    ],
)
def test_bad_evaluation_options_are_one_line(tmp_path, capsys, extra, message):
    status = cli.main(["evaluate", "--model", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err


def test_missing_files_are_one_line(tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path / "no" / "such" / "model")]) == 2
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and "does not exist" in err and err.count("\n") == 1
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml"), "--output-dir", str(tmp_path)]) == 2
    assert "--config:" in capsys.readouterr().err


def test_train_and_finetune_share_their_defaults():
    train_parsed = train_command.build_parser().parse(["--output-dir", "x"])
    finetune_parsed = finetune_command.build_parser().parse(["--output-dir", "x", "--pretrained", "p"])
    _, _, train_run, train_rec, train_raw = train_parsed
    _, _, finetune_run, finetune_rec, finetune_raw = finetune_parsed
    assert train_rec == finetune_rec and train_run == finetune_run
    assert vars(train_raw) == vars(finetune_raw)
    assert train_raw.num_train_epochs == 300 and train_raw.learning_rate == 1e-3
    args = training_arguments(train_raw, train_rec, train_run)
    assert args.per_device_train_batch_size == 256 and args.metric_for_best_model == "full_ndcg@10"
    assert args.lr_scheduler_type.value == "constant" and args.max_grad_norm == 0.0
    # every TrainingArguments field is an option, e.g. schedulers, warm-up and integrations
    _, _, run_args, rec, raw = train_command.build_parser().parse(
        ["--output-dir", "x", "--lr_scheduler_type", "cosine", "--warmup_steps", "5", "--report_to", "none",
         "--train_sampling_strategy", "group_by_length", "--resume"])  # fmt: skip
    args = training_arguments(raw, rec, run_args)
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 5 and run_args.resume == "latest"
    assert args.train_sampling_strategy == "group_by_length"


def test_history_window_default_is_the_configs(tmp_path, csv_log):
    from blossom_hf import BlossomRecConfig
    from blossom_hf.commands.options import DEFAULT_HISTORY_WINDOW

    assert DEFAULT_HISTORY_WINDOW == BlossomRecConfig().max_history_length == 200


def test_config_file_with_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 7\nlr: 0.005\neval-protocols: full\nhidden_size: 48\noutput_dir: from-file\n")
    data_args, model_args, run_args, rec, raw = train_command.build_parser().parse(
        ["--config", str(config), "--lr", "0.002"])
    assert raw.num_train_epochs == 7 and raw.learning_rate == 0.002, "the command line wins over the file"
    assert rec.eval_protocols == ("full",) and model_args.hidden_size == 48 and raw.output_dir == "from-file"
    (tmp_path / "typo.yaml").write_text("epoch: 7\n")
    with pytest.raises(BlossomUserError, match="unknown option 'epoch'; did you mean 'epochs'"):
        train_command.build_parser().parse(["--config", str(tmp_path / "typo.yaml")])
    (tmp_path / "broken.json").write_text('{"epochs": 7,\n "lr": }')
    with pytest.raises(BlossomUserError, match=r"broken.json, line 2, column 8"):
        train_command.build_parser().parse(["--config", str(tmp_path / "broken.json")])


def test_attention_backend_default_follows_the_device(monkeypatch, caplog):
    import torch

    caplog.set_level(logging.INFO, logger="blossom_hf.commands.options")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attn_implementation(None, for_training=True) == "sdpa"
    assert resolve_attn_implementation("eager", for_training=True) == "eager"
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")
    assert resolve_attn_implementation(None, for_training=True) == "triton"
    assert "attention backend: triton (training on Test GPU" in caplog.text
    assert resolve_attn_implementation(None, for_training=True, use_cpu=True) == "sdpa"


def test_json_output_is_strict_json(tmp_path, csv_log, capfd):
    import json

    status = cli.main(train_argv(csv_log, tmp_path / "run", "--epochs", "1", "--attention-type", "full", "--json"))
    out = capfd.readouterr().out
    assert status == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")

    record = json.loads(out, parse_constant=refuse)
    assert record["test"]["full"]["users"] == 30 and record["command"][:2] == ["blossom-hf", "train"]


def test_interrupt_and_os_errors_are_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def disk_full(argv):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_command, "main", interrupted)
    assert cli.main(["train"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "--resume" in err
    monkeypatch.setattr(train_command, "main", disk_full)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(train_command, "main", interrupted)
        cli.main(["--debug", "train"])


def test_dense_model_never_defaults_to_the_triton_backend(monkeypatch):
    """On a CUDA machine the default for BlossomRec training is triton, but the dense attention_type='full' model
    (which triton does not implement) gets sdpa; an explicit choice is always kept (found on the GPU: the dense
    baseline crashed with the triton default)."""
    import importlib.util

    import torch

    from blossom_hf.commands.options import resolve_attn_implementation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "a test GPU")
    assert resolve_attn_implementation(None, True, attention_type="full") == "sdpa"
    assert resolve_attn_implementation("eager", True, attention_type="full") == "eager"
    expected = "triton" if importlib.util.find_spec("triton") is not None else "sdpa"
    assert resolve_attn_implementation(None, True, attention_type="blossom") == expected
    assert resolve_attn_implementation(None, True, use_cpu=True, attention_type="blossom") == "sdpa"
