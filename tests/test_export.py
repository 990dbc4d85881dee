"""Export for serving: torch.compile(fullgraph=True), torch.export with a dynamic batch, ONNX in onnxruntime.

The scoring path (``output_last_hidden_state=False``) has no data-dependent Python check under tracing, so each
route must give the eager model's scores; the ONNX test uses the bundled ML-1M checkpoint and its sample histories.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import REPO, random_histories, tiny_config

from blossom_hf import BlossomRecModel
from blossom_hf.serving import ScoringModule, compile_for_serving, export_onnx, export_program

ML1M = REPO / "model_cards" / "blossomrec-ml1m"


def _scores(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_last_hidden_state=False).logits[:, 1:]


@pytest.mark.parametrize("attention_type,backend", [("blossom", "sdpa"), ("full", "sdpa"), ("blossom", "eager")])
def test_compile_fullgraph_has_no_graph_break(generator, attention_type, backend):
    torch._dynamo.reset()
    model = BlossomRecModel(tiny_config(attention_type=attention_type, attn_implementation=backend,
                                        max_history_length=24)).eval()
    ids = random_histories(3, 24, model.config.vocab_size, generator, padding="left")
    compiled = compile_for_serving(model, backend="eager")  # dynamo capture only: fullgraph=True raises on a break
    with torch.no_grad():
        got = compiled(ids)[:, 1:]
    torch.testing.assert_close(got, _scores(model, ids), rtol=1e-5, atol=1e-5)


def test_torch_export_with_dynamic_batch(generator):
    model = BlossomRecModel(tiny_config(max_history_length=20)).eval()
    program = export_program(model, history_length=20)
    runner = program.module()
    for batch in (1, 3, 7):
        ids = random_histories(batch, 20, model.config.vocab_size, generator, padding="left")
        with torch.no_grad():
            torch.testing.assert_close(runner(ids)[:, 1:], _scores(model, ids), rtol=1e-5, atol=1e-5)
    # the serving path equals the full forward's last-position scores
    ids = random_histories(4, 20, model.config.vocab_size, generator)
    with torch.no_grad():
        torch.testing.assert_close(_scores(model, ids), model(ids).logits[:, 1:], rtol=1e-5, atol=1e-5)


def test_export_refuses_untraceable_backend_and_nan_weights(tmp_path):
    model = BlossomRecModel(tiny_config()).eval()
    model.config._attn_implementation_internal = "triton"  # as if selected on a GPU
    with pytest.raises(ValueError, match="cannot be traced for export; switch first"):
        export_program(model)
    model.config._attn_implementation_internal = "sdpa"
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.layers[0].mlp.fc_in.weight[0, 0] = float("nan")
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match="layers.0.mlp.fc_in.weight holds NaN"):
        export_onnx(broken, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir()), "nothing is left behind"
    with pytest.raises(ValueError, match="top_k must be"):
        ScoringModule(model, top_k=0)


def test_onnx_export_of_the_bundled_checkpoint_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = BlossomRecModel.from_pretrained(ML1M).eval()
    path = export_onnx(model, tmp_path / "blossomrec.onnx", history_length=50)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["blossomrec.onnx"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(model, path, history_length=50)

    samples = json.loads((ML1M / "sample_scores.json").read_text())["samples"]
    histories = [model.vocabulary.encode(s["history"])[-50:] for s in samples]
    ids = torch.zeros(len(histories), 50, dtype=torch.long)
    for row, h in enumerate(histories):
        ids[row, 50 - len(h):] = torch.tensor(h)  # left padding
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input_ids": ids.numpy()})[0])
    want = model(input_ids=ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got[:, 1:], want[:, 1:], rtol=1e-4, atol=1e-4)
    top_onnx = got[:, 1:].topk(10).indices + 1
    assert torch.equal(top_onnx, want[:, 1:].topk(10).indices + 1)
    for sample, row in zip(samples, top_onnx.tolist(), strict=True):  # the card's own top-10 lists
        if len(sample["history"]) <= 50:
            assert model.vocabulary.decode(row) == sample["items"]
