"""The fields of a run record that the result tables need: epochs run, whether and why a run was capped, time per
epoch and per validation, time to the best epoch, peak GPU memory, backend and source revision (CPU, tiny data)."""

from __future__ import annotations

import json
import time

import pytest
from hub_testing import write_interactions

from blossom_hf.commands import train as train_command
from blossom_hf.run_record import LATER_FIELDS, RunRecord, elapsed_at_step, source_revision, summarize_seconds
from blossom_hf.trainer import TimeLimitCallback


def tiny_run(tmp_path, name: str, *extra: str) -> RunRecord:
    log = write_interactions(tmp_path / "log.csv", n_users=40, items=list(range(1, 31)))
    return train_command.run([
        "--dataset", str(log), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
        "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
        "--intermediate-size", "16", "--max-history-length", "12", "--batch-size", "8", "--no-progress",
        "--eval-protocols", "full", "uni10", "--attention-type", "full", "--output-dir", str(tmp_path / name),
        *extra,
    ])  # fmt: skip


def test_early_stopped_run_records_cost_and_stop_fields(tmp_path):
    # learning rate 0: validation never improves after the first epoch, so patience 1 stops after epoch 2
    record = tiny_run(tmp_path, "early", "--lr", "0", "--patience", "1", "--epochs", "6")
    saved = RunRecord.load(tmp_path / "early")
    assert saved.to_dict() == json.loads(json.dumps(record.to_dict()))  # what was returned is what was written
    assert saved.epochs_run == 2.0 and saved.capped is False and "early stopping" in saved.stop_reason
    assert saved.best["epoch"] == 1.0
    assert saved.train_seconds_per_epoch["n"] == 2 and saved.train_seconds_per_epoch["median"] > 0
    assert saved.eval_seconds["n"] == 2 and saved.eval_seconds["min"] > 0
    elapsed = [e["elapsed_seconds"] for e in saved.epochs if "elapsed_seconds" in e]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1] <= saved.timings["elapsed_training_seconds"]
    assert saved.time_to_best_seconds == pytest.approx(elapsed[0])
    assert saved.peak_gpu_memory_bytes is None  # trained on the CPU
    assert saved.backend == "sdpa"
    assert saved.source_revision == source_revision()
    assert saved.seed == 42 and saved.command[:2] == ["blossom-hf", "train"]


def test_deadline_caps_a_run_and_says_why(tmp_path):
    record = tiny_run(tmp_path, "capped", "--epochs", "5", "--time-limit-at", f"{time.time() - 1:.0f}")
    assert record.capped is True and "deadline" in record.stop_reason
    assert record.timings["stopped_by_time_limit"] is True
    assert record.epochs_run < 1.0, "the deadline stops training at the first step, inside epoch 1"
    assert record.train_seconds_per_epoch == {"n": 0}, "an epoch cut short is not a time per epoch"
    assert record.best["checkpoint"] is not None and record.test["full"]["users"] > 0  # best model so far evaluated


def test_old_records_load_without_the_new_fields(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"seed": 3, "test": {}, "timings": {"total_seconds": 1.0}}))
    record = RunRecord.load(tmp_path)
    assert record.seed == 3 and record.capped is None and record.peak_gpu_memory_bytes is None
    assert record.train_seconds_per_epoch == {} and record.extra == {}
    assert not set(LATER_FIELDS) & set(record.to_dict()), "unset later fields stay out, so old files round-trip"
    assert "capped" not in record.to_dict() and "capped" in RunRecord(capped=False).to_dict()


def test_helpers():
    assert summarize_seconds([]) == {"n": 0}
    assert summarize_seconds([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "mean": 4.0, "min": 1.0, "max": 10.0,
                                                          "first": 3.0, "n": 4}  # fmt: skip
    history = [{"step": 4, "epoch_train_seconds": 1.0}, {"step": 8, "elapsed_seconds": 5.5}]
    assert elapsed_at_step(history, 8) == 5.5 and elapsed_at_step(history, 4) is None
    assert elapsed_at_step(history, None) is None
    with pytest.raises(ValueError, match="minutes or at"):
        TimeLimitCallback()


def test_collect_results_tables_the_new_fields(tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("collect_results", REPO / "scripts" / "dev" / "collect_results.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)

    def record(seed: int, ndcg: float, capped: bool) -> dict:
        epochs = [{"step": 10 * e, "epoch": float(e), "eval_full_ndcg@10": ndcg * e / 3, "eval_uni100_ndcg@10": 0.5,
                   "elapsed_seconds": 2.0 * e, "epoch_train_seconds": 1.5} for e in (1, 2, 3)]  # fmt: skip
        return {"seed": seed, "test": {"full": {"ndcg@10": ndcg, "hit@10": 0.2}}, "epochs": epochs,
                "model_config": {"attention_type": "blossom", "max_history_length": 50}, "backend": "triton",
                "training": {"example_style": "sasrec"}, "best": {"epoch": 3.0}, "epochs_run": 3.0, "capped": capped,
                "train_seconds_per_epoch": {"median": 1.5}, "eval_seconds": {"median": 0.25},
                "time_to_best_seconds": 6.0, "peak_gpu_memory_bytes": {"allocated": 2 * 1024**3}, "command": [
                    "blossom-hf", "train", "--seed", str(seed), "--output-dir", f"/tmp/x-s{seed}"]}  # fmt: skip

    for seed, ndcg, capped in ((1, 0.10, True), (2, 0.12, False)):
        (tmp_path / f"data-L50-blossom-s{seed}.json").write_text(json.dumps(record(seed, ndcg, capped)))
    (tmp_path / "data-L50-blossom-s3.failed.txt").write_text("out of memory")
    row = collect.summarize(tmp_path, "test")["data-L50-blossom"]
    assert row["seeds"] == [1, 2] and row["no_record"] == ["3"] and row["capped"] == [True, False]
    assert row["full_ndcg@10"][0] == pytest.approx(0.11) and row["peak_gpu_memory_gib"] == (2.0, 0.0)
    table = collect.markdown_table(collect.summarize(tmp_path, "test"))
    assert "| 1,2 (no record: 3) |" in table and "| 1/2 |" in table  # capped: one of two
    assert "blossom-hf train --seed S --output-dir OUT/NAME" in table


@pytest.mark.parametrize("option,value", [("time_limit_at", 0), ("time_limit_at", -5.0), ("time_limit_minutes", 0)])
def test_time_limit_options_refuse_non_positive_values(option, value):
    from blossom_hf.errors import BlossomUserError
    from blossom_hf.training_args import RecTrainingConfig

    flag = "--" + option.replace("_", "-")
    with pytest.raises(BlossomUserError, match=flag):
        RecTrainingConfig(**{option: value})
