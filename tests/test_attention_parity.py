"""eager and sdpa compute the same model: outputs and the gradient of every parameter, fp32.

Tolerances (fp32, different summation orders): outputs rtol 1e-5 / atol 1e-5; gradients rtol 1e-4 and
atol 1e-5 x the largest gradient entry of the parameter (see _assert_grads_close).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_histories, tiny_config

from blossom_hf import BlossomRecModel


def _run(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_grads_close(grads_a, grads_b):
    """Per element rtol 1e-4; atol 1e-5 x the parameter's largest gradient (at least 1% of the model's largest:
    some gradients are exactly zero in theory, e.g. of W_q when every history has one item)."""
    assert grads_a.keys() == grads_b.keys()
    largest = max(float(g.abs().max()) for g in grads_b.values())
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        atol = 1e-5 * max(float(b.abs().max()), 1e-2 * largest)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("attention_type", ["blossom", "full"])
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("seq_len", [1, 7, 16, 50, 200])
@pytest.mark.parametrize("padding,sinks", [("right", 0), ("left", 2)])
def test_eager_and_sdpa_agree(generator, attention_type, groups, seq_len, padding, sinks):
    config = tiny_config(
        hidden_size=64, num_attention_heads=8, num_key_value_heads=groups, attention_type=attention_type,
        max_history_length=min(seq_len, 120), ltis_block_size=8, ltis_compression_window=16,
        ltis_num_selected_blocks=3, stis_window=4, stis_num_sinks=sinks, attn_implementation="eager",
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    eager = BlossomRecModel(config)
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    ids = random_histories(3, seq_len, config.vocab_size, generator, padding=padding)
    labels = torch.where(ids > 0, torch.randint(1, config.vocab_size, ids.shape, generator=generator), 0)

    out_e, grads_e = _run(eager, ids, labels)
    out_s, grads_s = _run(sdpa, ids, labels)
    torch.testing.assert_close(out_s.logits[:, 1:], out_e.logits[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_s.last_hidden_state, out_e.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_s.loss, out_e.loss, rtol=1e-5, atol=1e-6)
    _assert_grads_close(grads_s, grads_e)
    with torch.no_grad():  # the sdpa backend without a gradient: the CPU kernel (or its PyTorch inference layouts)
        torch.testing.assert_close(sdpa(ids).logits[:, 1:], out_e.logits[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("straight_through", [True, False])
def test_backends_agree_on_functional_inputs(generator, straight_through):
    """Backend functions on raw random q/k/v/compressed keys/gates (not through a model), grads of all inputs."""
    from blossom_hf.models.blossomrec.attention_eager import eager_blossom_attention
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_sdpa import sdpa_blossom_attention

    batch, heads, groups, seq_len, dim, block = 3, 4, 2, 45, 16, 4
    pattern = BlossomPattern(block_size=block, compression_window=8, num_selected_blocks=3, stis_window=5,
                             stis_num_sinks=1, straight_through=straight_through)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_()

    inputs = [leaf(batch, heads, seq_len, dim), leaf(batch, groups, seq_len, dim), leaf(batch, groups, seq_len, dim),
              leaf(batch, groups, seq_len // block, dim),
              torch.rand(batch, heads, seq_len, 2, generator=generator).requires_grad_()]
    lengths = torch.tensor([45, 1, 30])
    weights = torch.randn(batch, heads, seq_len, dim, generator=generator)
    results = []
    for fn in (eager_blossom_attention, sdpa_blossom_attention):
        out = fn(*inputs, lengths, scaling=dim**-0.5, pattern=pattern)
        grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True, materialize_grads=True)
        results.append((out, grads))
    (out_e, grads_e), (out_s, grads_s) = results
    torch.testing.assert_close(out_s, out_e, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_s, grads_e, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (out_s[1, :, 1:] == 0).all() and torch.isfinite(out_s).all()
