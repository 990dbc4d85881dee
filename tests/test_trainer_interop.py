"""A plain `transformers.Trainer` on a `datasets.Dataset` reports ranking metrics through `RankingMetrics`;
length-grouped batches for long windows."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from hub_testing import write_interactions
from transformers import Trainer, TrainingArguments, default_data_collator

from blossom_hf import BlossomRecModel
from blossom_hf.data import DataSpec, leave_one_out
from blossom_hf.data.collator import SequenceCollator, pack_histories
from blossom_hf.data.examples import RankingDataset, training_examples
from blossom_hf.evaluation import RankingMetrics, build_evaluation_sets, evaluate_model, metrics_from_ranks
from blossom_hf.training import RecTrainingConfig, SequentialRecTrainer, default_training_arguments, example_lengths

datasets.disable_progress_bars()


def test_preprocess_logits_ranks_with_pessimistic_ties():
    logits = torch.tensor([[9.0, 1.0, 3.0, 3.0, 0.5], [9.0, 5.0, 1.0, 2.0, 0.0]])
    ranks = RankingMetrics.preprocess_logits((logits, None), torch.tensor([2, 1]))
    assert ranks.tolist() == [2, 1], "padding never competes; a tie ranks the target below"
    with pytest.raises(ValueError, match="NaN/inf scores"):
        RankingMetrics.preprocess_logits(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([2]))


def test_plain_trainer_reports_ranking_metrics_on_a_datasets_dataset(tmp_path):
    log = write_interactions(tmp_path / "log.csv", n_users=30, items=list(range(1, 31)))
    data = DataSpec(path=str(log), format="csv", user_col="user", item_col="item", time_col="ts").load()
    split = leave_one_out(data)
    examples = split.test()
    window = 12
    input_ids = pack_histories(examples.items, examples.starts, examples.ends, window)
    eval_dataset = datasets.Dataset.from_dict({"input_ids": input_ids.tolist(),
                                               "labels": examples.targets.astype(np.int64).tolist()})  # fmt: skip
    torch.manual_seed(0)
    model = BlossomRecModel(tiny_config(vocab_size=data.n_items + 1, max_history_length=window))
    metrics = RankingMetrics(cutoffs=(1, 10))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "out"), per_device_eval_batch_size=7, use_cpu=True,
                               report_to="none", disable_tqdm=True),
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=metrics.preprocess_logits,
    )  # fmt: skip
    result = trainer.evaluate()
    assert "eval_loss" in result and "eval_ndcg@10" in result and "eval_hit@1" in result
    # the same numbers as the library's own evaluation of those users
    sets = build_evaluation_sets(split, ["full"], seed=0)
    ours = evaluate_model(model, sets, splits=("test",), protocols=("full",), cutoffs=(1, 10), progress=False)
    expected = ours["test"]["full"].metrics
    for name in ("hit@1", "hit@10", "ndcg@10", "mrr@10"):
        assert result[f"eval_{name}"] == pytest.approx(expected[name]), name
    assert metrics_from_ranks(ours["test"]["full"].ranks, (10,))["ndcg@10"] == pytest.approx(result["eval_ndcg@10"])


def test_group_by_length_batches_use_the_real_history_lengths(tmp_path):
    # enough examples for transformers' mega-batches (50 batches, or len // (4 x batch)) to group anything
    log = write_interactions(tmp_path / "log.csv", n_users=320, items=list(range(1, 31)))
    data = DataSpec(path=str(log), format="csv", user_col="user", item_col="item", time_col="ts").load()
    split = leave_one_out(data)
    window = 20
    train = training_examples(split, "sasrec", window, "tile")
    lengths = example_lengths(train)
    assert lengths.min() >= 1 and lengths.max() <= window and len(set(lengths.tolist())) > 3
    first = train.__getitems__([0])["labels"][0]
    assert (first > 0).sum() == lengths[0], "the length is the number of real positions"
    rec = RecTrainingConfig(eval_protocols=["full"])
    args = default_training_arguments(tmp_path / "run", rec, per_device_train_batch_size=8, use_cpu=True,
                                      train_sampling_strategy="group_by_length", report_to="none")  # fmt: skip
    model = BlossomRecModel(tiny_config(vocab_size=data.n_items + 1, max_history_length=window))
    sets = build_evaluation_sets(split, rec.eval_protocols, 0)
    trainer = SequentialRecTrainer(model=model, args=args, train_dataset=train, data_collator=SequenceCollator(window),
                                   eval_dataset=RankingDataset(sets["valid"].examples, window), split=split,
                                   rec_config=rec, evaluation_sets=sets)  # fmt: skip
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "LengthGroupedSampler"
    assert sampler.lengths == lengths.tolist()
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(train)))
    batch_spread = np.mean([np.ptp(lengths[order[i:i + 8]]) for i in range(0, len(order) - 7, 8)])
    random_spread = np.mean([np.ptp(lengths[np.random.default_rng(s).choice(len(train), 8)]) for s in range(50)])
    assert batch_spread < random_spread, "batches group histories of similar length"
