"""Every backend against every other on a CUDA GPU, inference and training layouts, fp32/bf16/fp16 (autocast),
L from 1 to 4096; recommend() with each backend on the bundled ML-1M checkpoint (issue: the default sdpa backend
crashed on CUDA with `.view` on a non-contiguous SDPA output).

Tolerances: fp32 scores rtol/atol 1e-4 (eager vs sdpa), 2e-3 with triton (tensor-core/ordering differences);
under bf16/fp16 autocast the median relative score error over rows must stay below 2e-2 (bf16) / 5e-3 (fp16) and
every score is finite. Imports only torch, transformers and blossom_hf.models (the GPU machine has no datasets).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from blossom_hf.models.blossomrec import BlossomRecConfig, BlossomRecModel, available_attention_backends

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ML1M = Path(__file__).resolve().parents[1] / "model_cards" / "blossomrec-ml1m"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
HALF_TOL = {"bf16": 2e-2, "fp16": 5e-3}


def _backends(seq_len: int, attention_type: str) -> list[str]:
    names = [n for n in available_attention_backends() if n in ("eager", "sdpa", "triton")]
    if attention_type == "full":
        names = [n for n in names if n != "triton"]
    if seq_len > 2048:
        names = [n for n in names if n != "eager"]  # [B, H, L, L] fp32 scores: kept to L <= 2048
    return names


def _batch(batch: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        length = seq_len if row == 0 else int(torch.randint(1, seq_len + 1, (1,), generator=generator))
        items = torch.randint(1, vocab, (length,), generator=generator)
        if row % 2:
            ids[row, seq_len - length:] = items  # left padding
        else:
            ids[row, :length] = items
    return ids.cuda()


def _model(seq_len: int, attention_type: str) -> BlossomRecModel:
    torch.manual_seed(seq_len)
    config = BlossomRecConfig(vocab_size=500, max_history_length=seq_len, attention_type=attention_type,
                              hidden_dropout_prob=0.0)
    return BlossomRecModel(config).cuda()


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, dtype: str, triton_involved: bool) -> None:
    got, want = got[:, 1:].float(), want[:, 1:].float()
    assert torch.isfinite(got).all() and torch.isfinite(want).all(), name
    if dtype == "fp32":
        tol = 2e-3 if triton_involved else 1e-4
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
    else:
        rel = ((got - want).abs().amax(dim=1) / want.abs().amax(dim=1).clamp_min(1e-6)).median()
        assert rel < HALF_TOL[dtype], f"{name}: median relative error {rel:.2e}"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("attention_type", ["blossom", "full"])
@pytest.mark.parametrize("seq_len,batch", [(1, 4), (7, 4), (16, 4), (50, 8), (200, 8), (512, 4), (1024, 2),
                                           (4096, 2)])
def test_backends_agree_inference(seq_len, batch, attention_type, dtype):
    model = _model(seq_len, attention_type).eval()
    ids = _batch(batch, seq_len, model.config.vocab_size, seed=seq_len)
    outputs = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=DTYPES[dtype] or torch.float32, enabled=dtype != "fp32"):
        for name in _backends(seq_len, attention_type):
            model.set_attn_implementation(name)
            full = model(ids)
            serving = model(ids, output_last_hidden_state=False)
            _compare(f"{name} serving vs forward", serving.logits, full.logits, dtype, False)
            outputs[name] = full.logits
    for (a, out_a), (b, out_b) in itertools.combinations(outputs.items(), 2):
        _compare(f"{a} vs {b}", out_a, out_b, dtype, "triton" in (a, b))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("seq_len,batch", [(1, 4), (50, 4), (200, 4), (1024, 2), (4096, 1)])
def test_backends_agree_training(seq_len, batch, dtype):
    model = _model(seq_len, "blossom").train()
    ids = _batch(batch, seq_len, model.config.vocab_size, seed=seq_len + 1)
    labels = torch.where(ids > 0, torch.randint_like(ids, 1, model.config.vocab_size), 0)
    results = {}
    for name in _backends(seq_len, "blossom"):
        model.set_attn_implementation(name)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=DTYPES[dtype] or torch.float32, enabled=dtype != "fp32"):
            out = model(ids, labels=labels)
        out.loss.backward()
        grad = model.layers[0].self_attn.q_proj.weight.grad.float().clone()
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all(), name
        results[name] = (out.loss.detach().float(), out.logits.detach(), grad)
    for (a, (loss_a, logits_a, grad_a)), (b, (loss_b, logits_b, grad_b)) in itertools.combinations(results.items(), 2):
        _compare(f"{a} vs {b} (training)", logits_a, logits_b, dtype, "triton" in (a, b))
        tol = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 1e-2}[dtype]
        torch.testing.assert_close(loss_a, loss_b, rtol=tol, atol=tol)
        if dtype == "fp32":
            # W_q's gradient is exactly zero in theory for one-item histories (a query with one key): absolute floor
            scale = max(float(grad_b.abs().max()), 1e-4)
            assert float((grad_a - grad_b).abs().max()) <= 1e-2 * scale, f"{a} vs {b}: W_q gradients differ"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
# dense: in the default causal query chunks; dense-one-call: the whole history per SDPA call; dense-chunks-48: chunks
# of 48 rows (not a multiple of the kernels' tiles); sparse: blocked (every position), gathered (serving)
@pytest.mark.parametrize("layout", ["dense", "dense-one-call", "dense-chunks-48", "sparse"])
@pytest.mark.parametrize("seq_len,batch", [(7, 4), (50, 8), (200, 8), (512, 4), (1024, 2)])
def test_sdpa_inference_layouts_on_cuda(monkeypatch, seq_len, batch, layout, dtype):
    """The sdpa inference layouts (forced through DENSE_MAX_LENGTH["cuda"], DENSE_QUERY_CHUNK_ROWS["cuda"]) against
    eager, forward and serving."""
    import blossom_hf.models.blossomrec.attention_sdpa as sdpa_module
    import blossom_hf.models.blossomrec.sdpa_inference as sdpa_inference

    monkeypatch.setitem(sdpa_module.DENSE_MAX_LENGTH, "cuda", 0 if layout == "sparse" else 10**9)
    rows = {"dense-one-call": 0, "dense-chunks-48": 48}
    if layout in rows:
        monkeypatch.setitem(sdpa_inference.DENSE_QUERY_CHUNK_ROWS, "cuda", rows[layout])
    model = _model(seq_len, "blossom").eval()
    ids = _batch(batch, seq_len, model.config.vocab_size, seed=seq_len + 2)
    with torch.no_grad(), torch.autocast("cuda", dtype=DTYPES[dtype] or torch.float32, enabled=dtype != "fp32"):
        model.set_attn_implementation("eager")
        want = model(ids).logits
        model.set_attn_implementation("sdpa")
        got, serving = model(ids).logits, model(ids, output_last_hidden_state=False).logits
    _compare(f"sdpa {layout} vs eager", got, want, dtype, False)
    _compare(f"sdpa {layout} serving vs eager", serving, want, dtype, False)


@pytest.mark.skipif(not (ML1M / "model.safetensors").is_file(), reason="bundled ML-1M checkpoint not present")
@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
def test_recommend_on_gpu_with_each_backend(backend):
    if backend not in available_attention_backends():
        pytest.skip(f"{backend} not available")
    model = BlossomRecModel.from_pretrained(ML1M, attn_implementation=backend).cuda().eval()
    recs = model.recommend([[1, 1196, 260]] * 300, k=5)  # the batch that crashed sdpa on CUDA
    assert len(recs) == 300 and all(r.items == recs[0].items for r in recs)
    samples = json.loads((ML1M / "sample_scores.json").read_text())
    got = model.recommend([s["history"] for s in samples["samples"]], k=samples["k"])
    for sample, rec in zip(samples["samples"], got, strict=True):
        assert rec.items == sample["items"], (backend, sample["history"][:5])
        torch.testing.assert_close(torch.tensor(rec.scores), torch.tensor(sample["scores"]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("attention_type", ["full", "blossom"])
def test_the_eager_forward_waits_for_the_device_once(attention_type):
    """The input checks and the compacted width reach the host in one transfer (inputs_blossomrec.checked_input_ids):
    one synchronising call per serving forward; the labels path adds one for its checks and the boolean selection of
    the positions with a target."""
    import warnings

    backend = "triton" if attention_type == "blossom" and "triton" in available_attention_backends() else "sdpa"
    config = BlossomRecConfig(vocab_size=300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                              max_history_length=96, attention_type=attention_type, attn_implementation=backend)
    model = BlossomRecModel(config).cuda().eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 300, (4, 96), generator=gen)
    ids[1, 40:] = 0
    ids = ids.cuda()

    def syncs(fn) -> list[str]:
        fn()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]

    with torch.inference_mode():
        serving = syncs(lambda: model(input_ids=ids, output_last_hidden_state=False))
        assert len(serving) == 1 and "inputs_blossomrec" in serving[0], serving
        labels = torch.where(ids > 0, ids % 7 + 1, 0)
        training = syncs(lambda: model(input_ids=ids, labels=labels))
        assert len([s for s in training if "inputs_blossomrec" in s]) == 1, training
        assert len([s for s in training if "modeling_blossomrec" in s]) <= 3, training


def test_interleaved_measurement_times_every_row_and_records_a_failure():
    from blossom_hf.benchmarks.gpu import measure_interleaved

    x = torch.randn(256, 256, device="cuda")
    calls = {"a": 0, "b": 0}

    def case(name):
        def step():
            calls[name] += 1
            return x @ x
        return step, None, {}

    def broken():
        raise RuntimeError("no such kernel")

    results = measure_interleaved({"a": lambda: case("a"), "bad": broken, "b": lambda: case("b")}, 2, 7, 3)
    assert list(results) == ["a", "bad", "b"]
    assert results["bad"]["status"] == "failed" and "no such kernel" in results["bad"]["error"]
    for name in ("a", "b"):
        assert results[name]["status"] == "ok" and results[name]["steps"] == 7 and results[name]["rounds"] == 3
        assert 0 < results[name]["ms_min"] <= results[name]["ms"] <= results[name]["ms_max"]
        assert calls[name] == 2 + 7 + 1  # warm-up, the timed calls, the memory step
