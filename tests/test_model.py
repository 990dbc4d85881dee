"""Model behaviour: padding, truncation, gradients, loss, recommend(), and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import random_histories, tiny_config

from blossom_hf import BlossomRecModel, ItemVocabulary, UnknownItemError


@pytest.fixture
def model(generator):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    return BlossomRecModel(tiny_config()).eval()


def _left_to_right(ids: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(ids)
    for row in range(ids.shape[0]):
        items = ids[row][ids[row] != 0]
        out[row, : len(items)] = items
    return out


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_left_and_right_padding_give_the_same_scores(model, generator, backend):
    model.set_attn_implementation(backend)
    left = random_histories(5, 40, model.config.vocab_size, generator, padding="left")
    right = _left_to_right(left)
    out_l, out_r = model(left), model(right)
    torch.testing.assert_close(out_l.logits, out_r.logits, rtol=1e-5, atol=1e-5)
    # hidden states follow their items
    torch.testing.assert_close(out_l.last_hidden_state[left != 0], out_r.last_hidden_state[right != 0],
                               rtol=1e-5, atol=1e-5)
    assert (out_l.last_hidden_state[left == 0] == 0).all()
    assert torch.isfinite(out_l.last_hidden_state).all() and torch.isfinite(out_l.logits[:, 1:]).all()
    assert torch.isinf(out_l.logits[:, 0]).all(), "padding id 0 is never recommended"
    # interior padding too: the model compacts real items
    gappy = torch.zeros(5, 80, dtype=torch.long)
    gappy[:, ::2] = left
    torch.testing.assert_close(model(gappy).logits, out_l.logits, rtol=1e-5, atol=1e-5)


def test_history_of_length_one_and_batch_independence(model):
    ids = torch.tensor([[0, 0, 7], [3, 4, 5]])
    out = model(ids)
    alone = model(torch.tensor([[7]]))
    torch.testing.assert_close(out.logits[0], alone.logits[0], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out.logits[:, 1:]).all()


def test_longer_history_keeps_most_recent_items(generator):
    model = BlossomRecModel(tiny_config(max_history_length=10)).eval()
    ids = random_histories(2, 30, model.config.vocab_size, generator, min_len=30)
    out = model(ids)
    torch.testing.assert_close(out.logits, model(ids[:, -10:]).logits, rtol=1e-6, atol=1e-6)
    assert (out.last_hidden_state[:, :20] == 0).all() and (out.last_hidden_state[:, 20:] != 0).any()


@pytest.mark.parametrize("attention_type", ["blossom", "full"])
def test_every_parameter_receives_a_gradient(generator, attention_type):
    model = BlossomRecModel(tiny_config(attention_type=attention_type, hidden_dropout_prob=0.1)).train()
    ids = random_histories(4, 40, model.config.vocab_size, generator, min_len=20)
    labels = torch.where(ids > 0, torch.randint(1, model.config.vocab_size, ids.shape, generator=generator), 0)
    model(ids, labels=labels).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert (model.item_embeddings.weight.grad[0] == 0).all(), "the padding row gets no gradient"


def test_loss_forms(model, generator):
    ids = random_histories(3, 12, model.config.vocab_size, generator, min_len=2)
    last_targets = torch.randint(1, model.config.vocab_size, (3,), generator=generator)
    out = model(ids, labels=last_targets)
    expected = torch.nn.functional.cross_entropy(out.logits, last_targets)
    torch.testing.assert_close(out.loss, expected)
    per_position = torch.zeros_like(ids)
    lengths = (ids != 0).sum(1)
    per_position[torch.arange(3), lengths - 1] = last_targets  # only the last position has a target
    torch.testing.assert_close(model(ids, labels=per_position).loss, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels must have shape"):
        model(ids, labels=torch.ones(3, 5, dtype=torch.long))


def test_recommend_with_vocabulary(model):
    model.vocabulary = ItemVocabulary([1000 + i for i in range(model.config.num_items)])
    recs = model.recommend([[1001, 1002, 1003], [1010]], k=5)
    assert len(recs) == 2 and all(len(r.items) == 5 for r in recs)
    assert all(isinstance(i, int) and i >= 1000 for i in recs[0].items)
    assert recs[0].scores == sorted(recs[0].scores, reverse=True)
    direct = model(torch.tensor([[2, 3, 4]])).logits[0]
    torch.testing.assert_close(torch.tensor(recs[0].scores), direct.topk(5).values, rtol=1e-5, atol=1e-6)
    seen = model.recommend([1001, 1002, 1003], k=model.config.num_items - 3, exclude_seen=True)[0]
    assert not {1001, 1002, 1003} & set(seen.items) and len(seen.items) == model.config.num_items - 3
    assert model.recommend([1001, 424242], k=3, unknown="skip")[0].items == model.recommend([1001], k=3)[0].items


def test_recommend_errors(model):
    model.vocabulary = ItemVocabulary([f"i{i}" for i in range(model.config.num_items)])
    with pytest.raises(UnknownItemError, match="history 1: unknown item id 'nope'"):
        model.recommend([["i1"], ["i2", "nope"]])
    with pytest.raises(ValueError, match="history 0 is empty"):
        model.recommend([[]])
    with pytest.raises(ValueError, match="empty after skipping|is empty after"):
        model.recommend([["nope"]], unknown="skip")
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(["i1"], k=0)
    with pytest.raises(ValueError, match="at least one history"):
        model.recommend([])


def test_bad_input_errors(model):
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=f"item index {vocab} at row 1, position 2 is outside the vocabulary"):
        model(torch.tensor([[1, 2, 3], [1, 2, vocab]]))
    with pytest.raises(ValueError, match="item index -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match=r"empty history .* row\(s\) \[1\]"):
        model(torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(TypeError, match="integer item indices, got dtype torch.float32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\) but input_ids has shape \(1, 2\)"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="attention_mask disagrees"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        model(torch.ones(2, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2]])
    ok = model(torch.tensor([[0, 1, 2]]), attention_mask=torch.tensor([[0, 1, 1]]))
    assert torch.isfinite(ok.logits[:, 1:]).all()


def test_folded_input_checks_give_the_longest_row_and_the_same_compaction():
    from blossom_hf.models.blossomrec.inputs_blossomrec import checked_input_ids, compact_histories

    ids = torch.tensor([[0, 3, 0, 4, 5], [6, 0, 0, 0, 0], [7, 8, 9, 1, 2]])
    real, longest = checked_input_ids(ids, 20, ids != 0)
    assert longest == 5 and torch.equal(real, ids != 0)
    for window in (2, 3, 5, 8):
        given = compact_histories(ids, real, window, longest=longest)
        read = compact_histories(ids, real, window)
        assert given.input_ids.shape[1] == min(5, window)
        for field in ("input_ids", "lengths", "source", "valid"):
            assert torch.equal(getattr(given, field), getattr(read, field)), (window, field)
    # several problems at once: the id range is reported first, as before the checks were folded
    with pytest.raises(ValueError, match="item index 99 at row 1, position 0"):
        checked_input_ids(torch.tensor([[0, 0], [99, 0]]), 20, torch.tensor([[1, 1], [1, 1]]))
    with pytest.raises(ValueError, match=r"empty history .* row\(s\) \[0\]"):
        checked_input_ids(torch.tensor([[0, 0], [3, 0]]), 20, torch.tensor([[1, 0], [1, 0]]))


def test_training_after_inference_mode(generator):
    """Cached key tables built under torch.inference_mode must not break a later backward pass."""
    model = BlossomRecModel(tiny_config(max_history_length=23))
    ids = random_histories(2, 23, model.config.vocab_size, generator, min_len=23)
    with torch.inference_mode():
        model(ids)
    model(ids, labels=ids).loss.backward()
    assert model.item_embeddings.weight.grad is not None


# ------------------------------------------------------------------------------------------------
# reliability: silent wrong answers and unclear errors (issue 10)
# ------------------------------------------------------------------------------------------------
def test_exclude_seen_masks_the_whole_history_not_only_the_window(generator):
    model = BlossomRecModel(tiny_config(max_history_length=8)).eval()
    num_items = model.config.num_items
    history = torch.randperm(num_items, generator=generator)[:30].add(1).tolist()  # 30 distinct items, window 8
    recs = model.recommend(history, k=num_items - 30, exclude_seen=True)[0]
    assert not set(history) & set(recs.items), "items older than the window came back"
    assert len(recs.items) == num_items - 30
    # a history covering the whole catalogue: nothing is left, and nothing seen is returned
    everything = model.recommend(list(range(1, num_items + 1)), k=10, exclude_seen=True)[0]
    assert everything.items == [] and everything.scores == []
    # fewer than k remain -> fewer than k come back
    most = model.recommend(list(range(1, num_items - 2)), k=10, exclude_seen=True)[0]
    assert sorted(most.items) == [num_items - 2, num_items - 1, num_items]


def test_recommend_refuses_non_finite_scores(model):
    with torch.no_grad():
        model.layers[-1].mlp.fc_out.bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf scores for history 0"):
        model.recommend([[1, 2, 3]], k=3)


@pytest.mark.parametrize("bad", [-1, 0])
def test_recommend_batch_size_must_be_positive(model, bad):
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad}"):
        model.recommend([[1, 2]], batch_size=bad)


def test_recommend_history_types(model):
    import numpy as np

    want = model.recommend([[3, 4, 5]], k=4)[0].items
    assert model.recommend(np.array([3, 4, 5]), k=4)[0].items == want  # 1-D numpy: one history
    assert model.recommend(torch.tensor([3, 4, 5]), k=4)[0].items == want  # 1-D tensor: one history
    assert model.recommend(np.array([[3, 4, 5], [3, 4, 5]]), k=4)[1].items == want  # 2-D: one per row
    assert model.recommend([np.array([3, 4, 5]), torch.tensor([3, 4, 5])], k=4)[1].items == want
    assert model.recommend(np.array([3, 4, 5], dtype=np.uint8), k=4)[0].items == want  # uint8 ids
    assert model.recommend([np.int64(3), np.int32(4), 5], k=4)[0].items == want  # numpy scalars
    with pytest.raises(TypeError, match="float"):
        model.recommend(np.array([3.0, 4.0]), k=4)
    with pytest.raises(TypeError, match="item id 3.0 is a float"):
        model.recommend([[3.0, 4]], k=4)
    with pytest.raises(TypeError, match="item id 4.0 is a float"):  # after plain ints (their fast path)
        model.recommend([[3, 4.0]], k=4)
    with pytest.raises(TypeError, match="item id True is a bool"):
        model.recommend([[3, True, 5]], k=4)
    with pytest.raises(TypeError, match="histories is a mapping"):
        model.recommend({"user": [3, 4]}, k=4)
    with pytest.raises(TypeError, match="history 1 is a dict"):
        model.recommend([[3], {"a": 1}], k=4)


def test_uint8_input_ids_are_not_misread(model):
    ids = torch.tensor([[3, 4, 200 % model.config.vocab_size]])
    torch.testing.assert_close(model(ids.to(torch.uint8)).logits, model(ids).logits)


@pytest.mark.parametrize("bad_label", [-5, 10_000])
def test_labels_outside_the_vocabulary_raise(model, bad_label):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=f"label {bad_label} at \\[0\\] is not an item index"):
        model(ids, labels=torch.tensor([bad_label]))
    with pytest.raises(ValueError, match=f"label {bad_label} at \\[0, 1\\]"):
        model(ids, labels=torch.tensor([[0, bad_label, 0]]))


def test_labels_without_any_target_raise_instead_of_nan(model):
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    with pytest.raises(ValueError, match="labels hold no target"):
        model(ids, labels=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="labels hold no target"):
        model(ids, labels=torch.full((2,), -100))
    assert torch.isfinite(model(ids, labels=torch.tensor([[0, 0, 7], [0, 0, 0]])).loss)


def test_config_typos_name_the_closest_field():
    from blossom_hf import BlossomRecConfig

    with pytest.raises(ValueError, match="no field 'stis_windw': did you mean 'stis_window'"):
        BlossomRecConfig(stis_windw=16)
    with pytest.raises(ValueError, match="no field 'totally_unknown'"):
        BlossomRecConfig(totally_unknown=1)
    assert BlossomRecConfig(attn_implementation="eager", torch_dtype="float32").stis_window == 8


def test_from_pretrained_of_a_missing_folder_is_one_line(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at .*model: check the path") as err:
        BlossomRecModel.from_pretrained(missing)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        BlossomRecModel.from_pretrained("./not-here")


def test_checkpoint_with_missing_or_unexpected_weights_is_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    model = BlossomRecModel(tiny_config())
    model.save_pretrained(tmp_path / "ok")
    weights = load_file(tmp_path / "ok" / "model.safetensors")

    missing = tmp_path / "missing"
    model.save_pretrained(missing)
    save_file({k: v for k, v in weights.items() if "fc_in.weight" not in k}, missing / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights do not match the config .*missing keys: \['layers.0.mlp.fc_in"):
        BlossomRecModel.from_pretrained(missing)
    loaded = BlossomRecModel.from_pretrained(missing, strict=False)  # the caller asked: loads, with a warning
    assert loaded.config.vocab_size == model.config.vocab_size

    full = tmp_path / "full"  # blossom weights under a config saying attention_type: full
    model.save_pretrained(full)
    config = json.loads((full / "config.json").read_text())
    config["attention_type"] = "full"
    (full / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"attention_type='full'.*unexpected keys: \['layers.0.self_attn.compressor"):
        BlossomRecModel.from_pretrained(full)
    BlossomRecModel.from_pretrained(tmp_path / "ok")  # a complete checkpoint loads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_per_half_is_the_textbook_formula_bit_for_bit(generator, dtype):
    """apply_rotary_reference evaluates ``x cos + rotate_half(x) sin`` per half: the same products and sums, so the
    same bits forward and backward, for any tables (halves of cos/sin that differ included) and the projections'
    non-contiguous layout."""
    from blossom_hf.models.blossomrec.layers_blossomrec import apply_rotary_reference, rotate_half

    x = torch.randn(3, 37, 8, 16, generator=generator).transpose(1, 2).to(dtype).requires_grad_()
    cos, sin = torch.randn(37, 16, generator=generator), torch.randn(37, 16, generator=generator)
    textbook_x = x.detach().clone().requires_grad_()
    got = apply_rotary_reference(x, cos, sin)
    xf = textbook_x.float()
    want = (xf * cos + rotate_half(xf) * sin).to(dtype)
    grad = torch.randn(got.shape, generator=generator).to(dtype)
    got.backward(grad)
    want.backward(grad)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(x.grad, textbook_x.grad)
