"""blossom_hf.cuda_graphs.CUDAGraphScorer: the captured serving forward against the model's own serving forward
(GPU; skipped without CUDA), and its clear errors (CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_histories, tiny_config

from blossom_hf import BlossomRecModel
from blossom_hf.cuda_graphs import CUDAGraphScorer


def test_refuses_a_cpu_model_and_bad_shapes():
    model = BlossomRecModel(tiny_config())
    with pytest.raises(RuntimeError, match="needs a model on a CUDA device"):
        CUDAGraphScorer(model, 4, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        CUDAGraphScorer(model, 0, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attention_type,backend", [("blossom", "triton"), ("blossom", "sdpa"), ("full", "sdpa")])
@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-autocast", "fp32"])
def test_replay_matches_the_serving_forward(attention_type, backend, autocast):
    gen = torch.Generator().manual_seed(3)
    # head dim 16: the triton backend's smallest (tiny_config's 32 / 4 heads = 8 is refused by it)
    config = tiny_config(attention_type=attention_type, attn_implementation=backend, max_history_length=48,
                         hidden_size=64)
    torch.manual_seed(0)
    model = BlossomRecModel(config).cuda().eval()
    dtype = torch.bfloat16 if autocast else None
    scorer = CUDAGraphScorer(model, 6, 40, dtype)
    for padding in ("right", "left"):  # a second replay with other inputs: the graph reads the new ids
        ids = random_histories(6, 40, config.vocab_size, gen, padding=padding).cuda()
        got = scorer(ids)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            want = model(input_ids=ids, output_last_hidden_state=False).logits
        assert got.shape == want.shape and bool(torch.isinf(got[:, 0]).all())
        tol = dict(rtol=3e-2, atol=3e-2) if autocast else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[:, 1:].float(), want[:, 1:].float(), **tol)
    with pytest.raises(ValueError, match="captured for input shape"):
        scorer(ids[:, :20])
