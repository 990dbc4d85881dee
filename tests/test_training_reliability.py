"""Training never saves or prints a silent wrong answer: non-finite losses, weights and scores stop with a clear
error (or are skipped and counted), one run per output folder, atomic checkpoints that survive a SIGKILL, and the
typed run record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config
from forked import FORKED, run_forked
from hub_testing import write_interactions

from blossom_hf import BlossomRecModel, cli
from blossom_hf.commands import train as train_command
from blossom_hf.data import DataSpec, leave_one_out
from blossom_hf.errors import NonFiniteError, OutputDirLockedError
from blossom_hf.evaluation import build_evaluation_sets, evaluate_model
from blossom_hf.run_folders import (
    LOCK_FILE,
    STAGING_DIR,
    OutputDirLock,
    complete_checkpoints,
    is_complete_checkpoint,
    recover_dir,
    replace_dir,
)
from blossom_hf.run_record import RunRecord, dumps_strict
from blossom_hf.training import RecTrainingConfig, assert_finite_parameters, default_training_arguments, run_training


@pytest.fixture
def csv_log(tmp_path) -> Path:
    return write_interactions(tmp_path / "log.csv", n_users=30, items=list(range(1, 31)))


def train_argv(csv_log: Path, output: Path, *extra: str) -> list[str]:
    return ["--dataset", str(csv_log), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
            "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
            "--intermediate-size", "16", "--max-history-length", "12", "--batch-size", "16", "--no-progress",
            "--eval-protocols", "full", "uni10", "--attention-type", "full", "--output-dir", str(output),
            *extra]  # fmt: skip


def saved_anything(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint-") or p.name in
                  ("best_model", "metrics.json")) if output.exists() else []  # fmt: skip


# --------------------------------------------------------------------------------------------------
# non-finite values


def test_diverging_training_stops_with_one_line_and_saves_nothing(tmp_path, csv_log, capsys):
    output = tmp_path / "run"
    status = cli.main(["train", *train_argv(csv_log, output, "--lr", "1e30", "--epochs", "2")])
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert status == 2 and line.startswith("blossom-hf train: error: ") and "Traceback" not in err, err
    assert "NaN/inf" in line or "training loss became" in line
    assert saved_anything(output) == [], "no checkpoint, best_model or metrics of a diverged run"
    assert not (output / LOCK_FILE).exists(), "the lock is released on error"


class FlakyLossModel(BlossomRecModel):
    """Its second training batch has a NaN loss."""

    calls = 0

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        if self.training and output.loss is not None:
            type(self).calls += 1
            if type(self).calls == 2:
                output.loss = output.loss * float("nan")
        return output


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_nonfinite_loss_is_skipped_and_counted_or_stops(tmp_path, csv_log, policy):
    data = DataSpec(path=str(csv_log), format="csv", user_col="user", item_col="item", time_col="ts").load()
    torch.manual_seed(0)
    FlakyLossModel.calls = 0
    model = FlakyLossModel(tiny_config(vocab_size=data.n_items + 1, max_history_length=12, num_hidden_layers=1))
    rec = RecTrainingConfig(eval_protocols=["full"], nonfinite_loss=policy, eval_batch_size=64)
    args = default_training_arguments(tmp_path / "run", rec, num_train_epochs=1, per_device_train_batch_size=8,
                                      use_cpu=True, disable_tqdm=True, bf16=False, dataloader_pin_memory=False)
    if policy == "error":
        with pytest.raises(NonFiniteError, match=r"training loss became nan at step 2 \(epoch"):
            run_training(data, model, tmp_path / "run", rec, args)
        assert saved_anything(tmp_path / "run") == []
        return
    record = run_training(data, model, tmp_path / "run", rec, args)
    assert record.training["nonfinite_losses_skipped"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0.0 <= record.metric("test", "full", "ndcg@10") <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]["nonfinite_losses_skipped"] == 1


def test_nonfinite_weights_are_never_saved_or_ranked(csv_log):
    data = DataSpec(path=str(csv_log), format="csv", user_col="user", item_col="item", time_col="ts").load()
    model = BlossomRecModel(tiny_config(vocab_size=data.n_items + 1, max_history_length=12)).eval()
    with torch.no_grad():
        model.item_embeddings.weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="parameter item_embeddings.weight holds NaN/inf values"):
        assert_finite_parameters(model, "the checkpoint")
    sets = build_evaluation_sets(leave_one_out(data), ["full"], seed=0)
    with pytest.raises(NonFiniteError, match="NaN/inf scores"):
        evaluate_model(model, sets, splits=("test",), protocols=("full",), progress=False)


def test_run_record_is_strict_json_and_reads_old_records(tmp_path):
    record = RunRecord(test={"full": {"ndcg@10": float("nan"), "hit@10": float("inf"), "users": 3}},
                       extra={"finetuning": {"from_scratch": True}})  # fmt: skip
    path = record.save(tmp_path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    again = RunRecord.load(tmp_path)
    assert again.test["full"] == {"ndcg@10": None, "hit@10": None, "users": 3}
    assert again["finetuning"] == {"from_scratch": True} and again.metric("test", "full", "users") == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"], "no temporary file left"
    assert "nan" not in dumps_strict({"x": float("nan")}).lower()
    old = sorted((REPO / "docs" / "results" / "runs").glob("*.json")) + sorted(REPO.glob("model_cards/*/metrics.json"))
    assert old, "the committed records are there"
    for file in old:
        loaded = RunRecord.load(file)
        assert loaded.to_dict() == json.loads(file.read_text()), file
        assert loaded.test and loaded.model_config["vocab_size"] > 1
    (tmp_path / "bad.json").write_text('{"test": {"full": \n')
    with pytest.raises(ValueError, match=r"bad.json, line 2, column 1: not valid JSON"):
        RunRecord.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------------
# one run per folder


def test_output_dir_lock_names_its_holder_and_takes_over_stale_ones(tmp_path, csv_log, capsys, caplog):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        output = tmp_path / "run"
        output.mkdir()
        (output / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                    "started": "earlier", "command": "blossom-hf train ..."}))
        with pytest.raises(OutputDirLockedError, match=f"in use by another run \\(pid {holder.pid} on"):
            OutputDirLock(output).acquire()
        status = cli.main(["train", *train_argv(csv_log, output, "--epochs", "1")])
        err = capsys.readouterr().err
        assert status == 2 and f"pid {holder.pid}" in err and "use another --output-dir" in err
        assert saved_anything(output) == [] and (output / LOCK_FILE).exists(), "the holder's lock stays"
    finally:
        holder.kill()
        holder.wait()
    with OutputDirLock(output, ["second"]) as lock:  # the holder is gone: its lock is stale
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputDirLockedError, match=str(os.getpid())):
            OutputDirLock(output).acquire()
    assert "taking over the stale lock" in caplog.text
    assert not (output / LOCK_FILE).exists()


# --------------------------------------------------------------------------------------------------
# atomic folders and a real SIGKILL


def test_replace_dir_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path):
    target, staging = tmp_path / "best_model", tmp_path / ".staging" / "best_model"
    target.mkdir()
    (target / "w").write_text("old")
    staging.mkdir(parents=True)
    (staging / "w").write_text("new")
    replace_dir(staging, target)
    assert (target / "w").read_text() == "new" and not (tmp_path / ".best_model.old").exists()
    # a kill between the two renames: the old folder is aside, the new one not yet in place
    (tmp_path / ".best_model.old").mkdir()
    (tmp_path / ".best_model.old" / "w").write_text("kept")
    target.rename(tmp_path / "gone")
    recover_dir(target)
    assert (target / "w").read_text() == "kept"


def test_replace_dir_without_an_atomic_exchange_renames_twice(tmp_path, monkeypatch):
    import blossom_hf.run_folders as run_folders

    monkeypatch.setattr(run_folders, "exchange", lambda a, b: False)  # e.g. a file system without renameat2
    target, staging = tmp_path / "best_model", tmp_path / ".staging" / "best_model"
    target.mkdir()
    (target / "w").write_text("old")
    staging.mkdir(parents=True)
    (staging / "w").write_text("new")
    replace_dir(staging, target)
    assert (target / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"], "no .old folder nor staging left"


TRAIN_SCRIPT = "import sys\nfrom blossom_hf import cli\nsys.exit(cli.main(['train', *sys.argv[1:]]))\n"


@FORKED
@pytest.mark.parametrize("point", ["checkpoint-save", "checkpoint-rename"])
def test_sigkill_during_a_checkpoint_save_loses_nothing_and_resume_works(tmp_path, csv_log, point, caplog):
    output = tmp_path / "run"
    argv = train_argv(csv_log, output, "--epochs", "2")  # 30 histories, batch 16: 2 steps per epoch
    # `blossom-hf train` in a process of its own (forked: tests/forked.py), killed by the fault injection
    returncode, log = run_forked(TRAIN_SCRIPT, argv, tmp_path / "train.log",
                                 env={"BLOSSOM_FAULT_INJECTION": f"{point}:4", "CUDA_VISIBLE_DEVICES": ""})
    assert returncode == -signal.SIGKILL, log[-2000:]
    assert "fault injection: killing the process at " + point in log
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-2"]
    assert not (output / "checkpoint-4").exists(), "no partial checkpoint under the final name"
    staged = output / STAGING_DIR / "checkpoint-4"
    assert (staged / "model.safetensors").is_file()
    assert is_complete_checkpoint(staged) == (point == "checkpoint-rename")
    assert not (output / "metrics.json").exists() and not (output / "best_model").exists()
    assert (output / LOCK_FILE).exists(), "the killed run's lock is left (taken over below)"

    caplog.set_level("WARNING")
    record = train_command.run([*argv, "--resume"])
    assert "taking over the stale lock" in caplog.text and "interrupted save" in caplog.text
    assert record.timings["global_steps"] == 4
    assert [e["step"] for e in record.epochs if "eval_full_ndcg@10" in e] == [2, 4]
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-2", "checkpoint-4"]
    assert not (output / STAGING_DIR).exists() and not (output / LOCK_FILE).exists()
    assert RunRecord.load(output).test == record.test
    BlossomRecModel.from_pretrained(output / "best_model")
