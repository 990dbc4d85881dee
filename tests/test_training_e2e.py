"""Losses, the Trainer glue, and an end-to-end run: train + evaluate on ML-100K (or a synthetic set when
../shared/data is absent) through `blossom-hf train` and `blossom-hf evaluate`, against a most-popular baseline."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.commands import evaluate as evaluate_command
from blossom_hf.commands import train as train_command
from blossom_hf.data import DataSpec, leave_one_out
from blossom_hf.errors import BlossomUserError, ResumeMismatchError
from blossom_hf.evaluation import build_evaluation_sets, evaluate_ranking, most_popular_scorer
from blossom_hf.training import chunked_cross_entropy, positions_with_targets, sampled_softmax_loss

datasets.disable_progress_bars()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- losses ---------------------------------------------------------------------------------------


def reference_cross_entropy(hidden, weight, targets):
    logits = hidden @ weight.t()
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_chunked_cross_entropy_matches_full_loss_and_gradients(chunk_size):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 40, (13,), generator=generator)
    expected = reference_cross_entropy(hidden, weight, targets)
    grad_h, grad_w = torch.autograd.grad(expected * 3.0, (hidden, weight))
    got = chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    got_h, got_w = torch.autograd.grad(got * 3.0, (hidden, weight))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, grad_h)
    torch.testing.assert_close(got_w, grad_w)
    assert got_w[0].abs().max() == 0  # padding row gets no gradient


def test_chunked_cross_entropy_gradcheck_and_empty():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 8, 3, 3])
    assert torch.autograd.gradcheck(lambda h, w: chunked_cross_entropy(h, w, targets, chunk_size=2), (hidden, weight))
    empty = chunked_cross_entropy(hidden[:0], weight, targets[:0])
    assert empty.item() == 0.0


def test_sampled_softmax_masks_accidental_hits():
    torch.manual_seed(0)
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(3, 4, requires_grad=True)  # items 1, 2 only: most negatives hit the target
    targets = torch.tensor([1, 2, 1, 2, 1, 2])
    loss = sampled_softmax_loss(hidden, weight, targets, num_negatives=50)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(hidden.grad).all() and weight.grad is not None


def tiny_model(vocab_size: int, max_history_length: int = 8, attention_type: str = "blossom") -> BlossomRecModel:
    config = BlossomRecConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, hidden_dropout_prob=0.0, max_history_length=max_history_length,
        attention_type=attention_type, ltis_block_size=4, ltis_compression_window=8, ltis_num_selected_blocks=2,
        stis_window=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return BlossomRecModel(config).eval()


def test_positions_with_targets_reproduce_the_models_loss():
    model = tiny_model(30)
    input_ids = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [2, 0, 0, 0, 0]])
    per_position = torch.tensor([[4, 5, 6, 0, 0], [8, 9, 10, 11, 12], [3, 0, 0, 0, 0]])
    last_only = torch.tensor([6, 12, 3])
    for labels in (per_position, last_only):
        output = model(input_ids=input_ids, labels=labels)
        hidden, targets = positions_with_targets(output.last_hidden_state, input_ids, labels)
        weight = model.item_embeddings.weight
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, chunk_size=5), output.loss)


# --- end to end -----------------------------------------------------------------------------------


def synthetic_interactions(path: Path, n_users: int = 250, n_items: int = 120, seed: int = 0) -> Path:
    """Users walk item chains (next = previous + 1 or + 2, with 10% random jumps): learnable order,
    nearly flat popularity."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,time"]
    for user in range(n_users):
        item = int(rng.integers(1, n_items + 1))
        for t in range(int(rng.integers(15, 40))):
            lines.append(f"u{user},i{item},{t}")
            jump = rng.random() < 0.1
            item = int(rng.integers(1, n_items + 1)) if jump else (item - 1 + int(rng.integers(1, 3))) % n_items + 1
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset_arguments(tmp_path: Path) -> list[str]:
    if (SHARED_DATA / "ml-100k" / "u.data").exists():
        return ["--dataset", "ml-100k", "--data-dir", str(SHARED_DATA)]
    path = synthetic_interactions(tmp_path / "synthetic.csv")
    return ["--dataset", str(path), "--user-col", "user", "--item-col", "item", "--time-col", "time"]


SMALL_MODEL = [
    "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
    "--intermediate-size", "64", "--dropout", "0.1", "--max-history-length", "50",
    "--windows", "last", "--batch-size", "64", "--lr", "3e-3", "--no-progress", "--eval-batch-size", "512",
]  # fmt: skip


def test_train_and_evaluate_beat_most_popular(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    output_dir = tmp_path / "run"
    data_arguments = dataset_arguments(tmp_path)
    record = train_command.run(
        [*data_arguments, *SMALL_MODEL, "--epochs", "2", "--patience", "2", "--output-dir", str(output_dir)]
    )

    # what a run leaves behind
    saved = json.loads((output_dir / "metrics.json").read_text())
    assert saved["test"]["full"]["ndcg@10"] == pytest.approx(record["test"]["full"]["ndcg@10"])
    for key in ("valid", "test", "model_config", "training", "data", "command", "versions", "seed", "timings"):
        assert key in saved, key
    assert set(saved["test"]) == {"full", "uni100"} and saved["training"]["example_style"] == "sasrec"
    assert len(saved["epochs"]) == 2 and all("epoch_train_seconds" in e for e in saved["epochs"])
    assert all("eval_full_ndcg@10" in e for e in saved["epochs"])
    model = BlossomRecModel.from_pretrained(output_dir / "best_model")
    assert model.vocabulary is not None and len(model.vocabulary) == model.config.vocab_size - 1

    # the most-popular baseline on the same split and the same uni100 candidates
    data = DataSpec.load_file(output_dir / "best_model").load()
    split = leave_one_out(data)
    sets = build_evaluation_sets(split, ["uni100"], seed=0)
    popular = most_popular_scorer(split.train_item_counts())
    baseline = {
        "full": evaluate_ranking(popular, sets["test"].examples, max_length=50, n_items=data.n_items, progress=False),
        "uni100": evaluate_ranking(
            popular, sets["test"].examples, max_length=50, n_items=data.n_items, protocol="uni100",
            negatives=sets["test"].negatives["uni100"], progress=False,
        ),
    }  # fmt: skip
    for protocol in ("full", "uni100"):
        for metric in ("ndcg@10", "hit@10"):
            ours, theirs = record["test"][protocol][metric], baseline[protocol].metrics[metric]
            assert ours > theirs, f"test {protocol} {metric}: model {ours:.4f} <= most popular {theirs:.4f}"

    # `blossom-hf evaluate` rebuilds the same data from the model folder and reproduces the numbers
    again = evaluate_command.run(
        ["--model", str(output_dir / "best_model"), "--splits", "valid", "test", "--no-progress"]
    )
    for split_name in ("valid", "test"):
        for protocol in ("full", "uni100"):
            assert again[split_name][protocol]["ndcg@10"] == pytest.approx(record[split_name][protocol]["ndcg@10"])


def test_resume_from_checkpoint(tmp_path):
    path = synthetic_interactions(tmp_path / "tiny.csv", n_users=40, n_items=30)
    common = [
        "--dataset", str(path), "--user-col", "user", "--item-col", "item", "--time-col", "time",
        "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
        "--intermediate-size", "16", "--max-history-length", "20", "--batch-size", "16", "--no-progress",
        "--eval-protocols", "full", "uni10", "--output-dir", str(tmp_path / "run"), "--attention-type", "full",
    ]  # fmt: skip
    first = train_command.run([*common, "--epochs", "1"])
    steps_per_epoch = first["timings"]["global_steps"]
    assert (tmp_path / "run" / f"checkpoint-{steps_per_epoch}").is_dir()
    # a fresh run in the folder of an earlier one is refused (their checkpoints would mix)
    with pytest.raises(BlossomUserError, match="already holds a run .*pass --resume to continue it"):
        train_command.run([*common, "--epochs", "1"])
    # a resume that would train nothing, or train another model or other data, is refused with the differing fields
    with pytest.raises(ResumeMismatchError, match="already trained 1 epochs and --epochs is 1"):
        train_command.run([*common, "--epochs", "1", "--resume"])
    changed = [*common, "--epochs", "2", "--resume"]
    changed[changed.index("--max-history-length") + 1] = "30"
    with pytest.raises(ResumeMismatchError, match="max_history_length 20 -> 30"):
        train_command.run(changed)
    with pytest.raises(ResumeMismatchError, match="learning_rate 0.001 -> 0.01"):
        train_command.run([*common, "--epochs", "2", "--lr", "0.01", "--resume"])
    other = synthetic_interactions(tmp_path / "other.csv", n_users=40, n_items=30, seed=1)
    with pytest.raises(ResumeMismatchError, match="the data differ"):
        train_command.run([*[str(other) if a == str(path) else a for a in common], "--epochs", "2", "--resume"])
    second = train_command.run([*common, "--epochs", "2", "--resume", "--eval-batch-size", "7"])
    assert second["timings"]["global_steps"] == 2 * steps_per_epoch
    assert [e["step"] for e in second["epochs"] if "eval_full_ndcg@10" in e] == [steps_per_epoch, 2 * steps_per_epoch]
    assert "uni10" in second["test"] and second["training"]["eval_protocols"] == ["full", "uni10"]
    third = train_command.run([*common, "--epochs", "1", "--overwrite-output-dir"])
    assert third["timings"]["global_steps"] == steps_per_epoch
    assert not (tmp_path / "run" / f"checkpoint-{2 * steps_per_epoch}").exists(), "the earlier run was cleared"


def test_ranking_runs_without_the_mixed_precision_wrapper():
    """Accelerate's bf16 forward wrapper is lifted while ranking, then put back for training."""
    import torch

    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.training import full_precision_forward

    model = BlossomRecModel(BlossomRecConfig(vocab_size=10, hidden_size=16, num_attention_heads=2,
                                             num_key_value_heads=1, intermediate_size=16))
    calls = []

    def wrapped(*args, **kwargs):  # stands in for the autocast wrapper Accelerate installs
        calls.append("wrapped")
        return model._original_forward(*args, **kwargs)

    model._original_forward = model.forward
    model.forward = wrapped
    ids = torch.tensor([[1, 2, 3]])
    with full_precision_forward(model):
        model(ids)
    assert calls == [], "ranking must call the original forward"
    model(ids)
    assert calls == ["wrapped"], "the wrapper is restored afterwards"
