"""blossom_hf.recommend_table: user-keyed input (a DataFrame of interactions or a mapping user -> history) in, a
table of (user, rank, item, score) out, with an explicit policy for users none of whose items the model knows."""

import pandas as pd
import pytest
import torch

from blossom_hf import BlossomRecConfig, BlossomRecModel, ItemVocabulary, recommend_table


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = BlossomRecConfig(vocab_size=31, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=1, intermediate_size=16, max_history_length=12)  # fmt: skip
    model = BlossomRecModel(config).eval()
    model.vocabulary = ItemVocabulary([f"i{n}" for n in range(1, 31)])
    return model


def test_a_dataframe_gives_the_same_lists_as_recommend_in_time_order(model):
    frame = pd.DataFrame({"uid": ["b", "a", "a", "b", "a"], "sku": ["i3", "i9", "i2", "i4", "i5"],
                          "ts": [5, 3, 1, 2, 2]})  # fmt: skip
    table = recommend_table(model, frame, user_col="uid", item_col="sku", time_col="ts", k=3)
    assert list(table.columns) == ["user", "rank", "item", "score", "fallback"]
    assert table["user"].tolist() == ["a"] * 3 + ["b"] * 3, "users in sorted-by-user order of the table"
    expected = model.recommend([["i2", "i5", "i9"], ["i4", "i3"]], k=3)
    for user, rec in zip(["a", "b"], expected, strict=True):
        rows = table[table.user == user]
        assert rows["item"].tolist() == rec.items and rows["rank"].tolist() == [1, 2, 3]
        assert rows["score"].tolist() == pytest.approx(rec.scores)
    assert not table["fallback"].any()


def test_a_mapping_and_the_cold_user_policies(model):
    histories = {"u1": ["i1", "i2"], "u2": ["nope"], "u3": ["i2", "unknown", "i7"]}
    with pytest.raises(ValueError, match=r"1 user\(s\) have no item the model knows \('u2'\); pass cold="):
        recommend_table(model, histories, k=2)
    skipped = recommend_table(model, histories, k=2, cold="skip", as_frame=False)
    assert [r["user"] for r in skipped] == ["u1", "u1", "u3", "u3"]
    assert [r["item"] for r in skipped if r["user"] == "u3"] == model.recommend(["i2", "i7"], k=2)[0].items
    popular = recommend_table(model, histories, k=2, cold="popular")
    fallback = popular[popular.user == "u2"]
    assert fallback["fallback"].all() and fallback["item"].tolist() == ["i2", "i1"], "i2 is the most frequent"
    assert popular["user"].tolist() == ["u1", "u1", "u2", "u2", "u3", "u3"], "first-seen user order"


def test_bad_input_is_named(model):
    with pytest.raises(KeyError, match=r"column\(s\) \['user'\] not in the table"):
        recommend_table(model, pd.DataFrame({"uid": [1], "item": ["i1"]}))
    with pytest.raises(ValueError, match="cold must be one of error, skip, popular"):
        recommend_table(model, {"u": ["i1"]}, cold="random")
    with pytest.raises(TypeError, match="user 'u': a history must be a list of item ids"):
        recommend_table(model, {"u": "i1"})
    with pytest.raises(TypeError, match="mapping; pass a list of histories, or use blossom_hf.recommend_table"):
        model.recommend({"u": ["i1"]})
