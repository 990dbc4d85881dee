"""Round trips (library and trust_remote_code routes; plain save_pretrained writes the code files through
register_for_auto_class), backend selection, config validation, registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import random_histories, thread_env, tiny_config
from transformers import AutoConfig, AutoModel

import blossom_hf
from blossom_hf import BlossomRecConfig, BlossomRecModel, ItemVocabulary


@pytest.fixture
def trained_like(generator):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    model = BlossomRecModel(tiny_config()).eval()
    with torch.no_grad():  # move off the init so every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.vocabulary = ItemVocabulary([f"movie-{i}" for i in range(model.config.num_items)])
    return model


def test_library_round_trip_is_bit_exact(tmp_path, trained_like, generator):
    ids = random_histories(4, 30, trained_like.config.vocab_size, generator)
    before = trained_like(ids).logits
    trained_like.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "item_vocabulary.json").is_file()
    assert not list(tmp_path.glob("*.bin"))
    package = Path(blossom_hf.__file__).parent / "models" / "blossomrec"
    assert {p.name for p in tmp_path.glob("*.py")} == {p.name for p in package.glob("*.py")} - {"__init__.py"}, (
        "a plain save_pretrained writes every module of the model folder (register_for_auto_class)"
    )
    assert "attn_implementation" not in (tmp_path / "config.json").read_text()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, BlossomRecModel) and loaded.vocabulary == trained_like.vocabulary
    assert torch.equal(loaded(ids).logits, before)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), BlossomRecConfig)


def test_switching_backend_changes_speed_not_results(tmp_path, trained_like, generator):
    trained_like.save_pretrained(tmp_path)
    ids = random_histories(4, 50, trained_like.config.vocab_size, generator)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    reference = eager(ids).logits
    eager.set_attn_implementation("sdpa")
    assert eager.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager(ids).logits, reference, rtol=1e-5, atol=1e-5)
    assert BlossomRecModel(tiny_config()).config._attn_implementation == "sdpa", "sdpa is the default"


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "blossom_hf" or name.startswith("blossom_hf."):
                raise ImportError("blossom_hf must not be importable in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel
    folder, resaved, ids_path = sys.argv[1], sys.argv[2], sys.argv[3]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    ids = torch.tensor(json.load(open(ids_path)))
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    out = {"logits": model(ids).logits.tolist(), "recs": model.recommend([["movie-1", "movie-2"]], k=3)[0].items}
    model.set_attn_implementation("eager")
    out["eager"] = model(ids).logits.tolist()
    model.set_attn_implementation("sdpa")
    model.save_pretrained(resaved)  # the remote-code class saves itself again: code, auto_map, vocabulary
    again = AutoModel.from_pretrained(resaved, trust_remote_code=True)
    assert type(again).__module__.startswith("transformers_modules"), type(again).__module__
    out["resaved"] = again(ids).logits.tolist()
    out["resaved_recs"] = again.recommend([["movie-1", "movie-2"]], k=3)[0].items
    assert not [m for m in sys.modules if m.startswith("blossom_hf")]
    print("RESULT" + json.dumps(out))
    """
)


def test_remote_code_round_trip_without_the_package(tmp_path, trained_like, generator):
    """Plain save_pretrained -> trust_remote_code load without blossom_hf -> save again -> load again."""
    folder = tmp_path / "repo"
    trained_like.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_blossomrec.BlossomRecConfig",
                                  "AutoModel": "modeling_blossomrec.BlossomRecModel"}  # fmt: skip
    assert (folder / "modeling_blossomrec.py").is_file() and (folder / "registry.py").is_file()
    assert (folder / "README.md").read_text().startswith("---\nlibrary_name: transformers\npipeline_tag: other")
    ids = random_histories(3, 30, trained_like.config.vocab_size, generator)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **thread_env()}
    resaved = tmp_path / "resaved"
    proc = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(resaved), str(tmp_path / "ids.json")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    expected = trained_like(ids).logits
    assert torch.equal(torch.tensor(result["logits"]), expected), "remote code reproduces scores bit for bit"
    torch.testing.assert_close(torch.tensor(result["eager"]), expected, rtol=1e-5, atol=1e-5)
    assert result["recs"] == trained_like.recommend([["movie-1", "movie-2"]], k=3)[0].items
    assert torch.equal(torch.tensor(result["resaved"]), expected), "a re-saved remote-code model loads the same"
    assert result["resaved_recs"] == result["recs"]
    assert {p.name for p in resaved.glob("*.py")} == {p.name for p in folder.glob("*.py")}
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == config["auto_map"]
    assert (resaved / "item_vocabulary.json").read_bytes() == (folder / "item_vocabulary.json").read_bytes()


def test_remote_code_keyword_is_gone(tmp_path, trained_like):
    with pytest.raises(TypeError, match=r"remote_code=\.\.\.\) was removed"):
        trained_like.save_pretrained(tmp_path / "x", remote_code=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_key_value_heads", 3, "num_attention_heads: must be divisible by num_key_value_heads=3"),
        ("hidden_size", 30, "hidden_size: must be divisible by num_attention_heads"),
        ("ltis_compression_window", 10, "ltis_compression_window: must be a multiple of ltis_block_size"),
        ("attention_type", "dense", "attention_type: must be one of"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob: must be a number in"),
        ("vocab_size", 1, "vocab_size: must be an integer >= 2"),
        ("stis_num_sinks", -1, "stis_num_sinks: must be a non-negative integer"),
        ("gate_bias_init", [1.0], "gate_bias_init: must be two numbers"),
        ("num_hidden_layers", "2", "num_hidden_layers: must be a positive integer"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_config_json_with_a_wrong_field_fails_to_load(tmp_path, trained_like):
    trained_like.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        AutoModel.from_pretrained(tmp_path)
    config["num_key_value_heads"] = 2
    config["blossomrec_format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99, newer"):
        AutoModel.from_pretrained(tmp_path)


def test_unknown_backend_lists_the_available_ones(tmp_path, trained_like):
    with pytest.raises(ValueError, match=r"Unknown BlossomRec attention backend 'flash'.*available here: \["):
        BlossomRecModel(tiny_config(attn_implementation="flash"))
    trained_like.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Unknown BlossomRec attention backend 'nope'"):
        AutoModel.from_pretrained(tmp_path, attn_implementation="nope")
    with pytest.raises(ValueError, match="Unknown BlossomRec attention backend"):
        trained_like.set_attn_implementation("nope")
    assert trained_like.config._attn_implementation == "sdpa", "a failed switch leaves the backend as it was"


def test_register_a_custom_backend(trained_like, generator):
    calls = []

    def scaled_sdpa(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        calls.append(query.shape)
        from blossom_hf.models.blossomrec.registry import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    ids = random_histories(2, 20, trained_like.config.vocab_size, generator)
    blossom_hf.register_attention_backend("my_backend", scaled_sdpa, description="test")
    try:
        with pytest.raises(ValueError, match="already registered"):
            blossom_hf.register_attention_backend("my_backend", scaled_sdpa)
        assert "my_backend" in blossom_hf.available_attention_backends()
        reference = trained_like(ids).logits
        trained_like.set_attn_implementation("my_backend")
        torch.testing.assert_close(trained_like(ids).logits, reference)
        assert len(calls) == trained_like.config.num_hidden_layers
        blossom_hf.register_attention_backend("broken", lambda *a, **k: None, availability=lambda: "needs X.")
        with pytest.raises(ValueError, match="'broken' is not available here: needs X."):
            trained_like.set_attn_implementation("broken")
    finally:
        blossom_hf.unregister_attention_backend("my_backend")
        blossom_hf.unregister_attention_backend("broken")
    with pytest.raises(TypeError, match="must be callable"):
        blossom_hf.register_attention_backend("x", 42)
