"""The serving path: the last layer scores only the last real position, with every backend and attention type;
backends without query-subset support and transformers AttentionInterface functions."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import random_histories, tiny_config

import blossom_hf
from blossom_hf import BlossomRecModel


@pytest.mark.parametrize("attention_type", ["blossom", "full"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("seq_len", [1, 9, 40])
def test_serving_path_gives_the_forward_scores(generator, attention_type, backend, seq_len):
    model = BlossomRecModel(tiny_config(attention_type=attention_type, attn_implementation=backend,
                                        max_history_length=32, stis_num_sinks=1)).eval()
    ids = random_histories(5, seq_len, model.config.vocab_size, generator, padding="left")
    with torch.no_grad():
        full = model(ids)
        serving = model(ids, output_last_hidden_state=False)
    torch.testing.assert_close(serving.logits[:, 1:], full.logits[:, 1:], rtol=1e-5, atol=1e-5)
    assert serving.last_hidden_state is None and full.last_hidden_state.shape[:2] == ids.shape
    assert torch.isinf(serving.logits[:, 0]).all()


def test_last_layer_attends_for_one_query_per_row(generator):
    shapes = []

    def recording(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        shapes.append((tuple(query.shape), tuple(kwargs["gate"].shape), kwargs.get("query_positions")))
        from blossom_hf.models.blossomrec.attention_sdpa import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    blossom_hf.register_attention_backend("recording", recording, query_subset=True)
    try:
        model = BlossomRecModel(tiny_config(attn_implementation="recording")).eval()
        ids = random_histories(3, 20, model.config.vocab_size, generator, min_len=5)
        with torch.no_grad():
            model(ids, output_last_hidden_state=False)
        heads = model.config.num_attention_heads
        (first_q, _, first_pos), (last_q, last_gate, last_pos) = shapes
        assert first_pos is None and first_q[2] == int((ids != 0).sum(1).max())
        assert last_q == (3, heads, 1, model.config.head_dim) and last_gate == (3, heads, 1, 2)
        assert last_pos.flatten().tolist() == ((ids != 0).sum(1) - 1).tolist()
    finally:
        blossom_hf.unregister_attention_backend("recording")


def test_backend_without_query_subset_runs_the_whole_last_layer_and_says_so(generator, caplog):
    from blossom_hf.models.blossomrec import layers_blossomrec
    from blossom_hf.models.blossomrec.attention_sdpa import sdpa_attention_forward

    calls = []

    def plain(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        assert "query_positions" not in kwargs
        calls.append(query.shape[2])
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    blossom_hf.register_attention_backend("plain_test", plain)
    layers_blossomrec._FULL_LAYER_NOTED.discard("plain_test")
    try:
        model = BlossomRecModel(tiny_config()).eval()
        ids = random_histories(2, 16, model.config.vocab_size, generator, min_len=16)
        reference = model(ids).logits
        model.set_attn_implementation("plain_test")
        with caplog.at_level(logging.WARNING, logger=layers_blossomrec.__name__):
            got = model(ids, output_last_hidden_state=False).logits
            model(ids, output_last_hidden_state=False)
        torch.testing.assert_close(got, reference)
        assert calls == [16] * 4, "every layer runs at every position"
        notes = [r for r in caplog.records if "no query_subset support" in r.getMessage()]
        assert len(notes) == 1, "logged once"
    finally:
        blossom_hf.unregister_attention_backend("plain_test")


def test_transformers_attention_interface_functions_serve_the_full_model(generator):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def mine(module, query, key, value, attention_mask, **kwargs):
        calls.append(tuple(attention_mask.shape))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("blossom_test_mine", mine)
    full = BlossomRecModel(tiny_config(attention_type="full")).eval()
    ids = random_histories(3, 12, full.config.vocab_size, generator, padding="left")
    reference = full(ids).logits
    mine_model = copy.deepcopy(full)
    mine_model.set_attn_implementation("blossom_test_mine")
    assert mine_model.config._attn_implementation == "blossom_test_mine"
    torch.testing.assert_close(mine_model(ids).logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine_model(ids, output_last_hidden_state=False).logits, reference, rtol=1e-5,
                               atol=1e-5)
    assert calls and len(calls[0]) == 4  # a 4-D boolean mask [B, 1, Q, L]
    assert BlossomRecModel(tiny_config(attention_type="full", attn_implementation="blossom_test_mine"))
    blossom = BlossomRecModel(tiny_config())
    with pytest.raises(ValueError, match="AttentionInterface function: it can serve attention_type='full'"):
        blossom.set_attn_implementation("blossom_test_mine")
    with pytest.raises(ValueError, match="'flash_attention_2' is one of transformers' own attention functions"):
        full.set_attn_implementation("flash_attention_2")


CARDS = sorted(p for p in (Path(__file__).resolve().parents[1] / "model_cards").glob("blossomrec-*")
               if (p / "sample_scores.json").is_file())


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_bundled_checkpoints_reproduce_their_sample_scores_with_every_backend(card, backend):
    from blossom_hf.hub import check_sample_scores

    model = BlossomRecModel.from_pretrained(card, attn_implementation=backend).eval()
    expected = json.loads((card / "sample_scores.json").read_text())
    assert check_sample_scores(model, expected) == []
