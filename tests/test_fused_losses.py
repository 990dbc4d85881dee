"""The optional fused linear cross-entropy losses (blossom_hf/fused_losses.py): refusals on the CPU and
without the library (CI), and agreement with the chunked loss on a GPU (marked ``gpu``)."""

from __future__ import annotations

import pytest
import torch

import blossom_hf.fused_losses as fused
from blossom_hf.errors import BlossomUserError
from blossom_hf.losses import chunked_cross_entropy
from blossom_hf.training_args import RecTrainingConfig


@pytest.mark.parametrize("name", ["liger"])
def test_missing_library_is_refused_with_the_install_command(name, monkeypatch):
    monkeypatch.setattr(fused, "fused_loss_available", lambda _: False)
    message = rf"--loss {name} needs the .* package: pip install 'blossom_hf\[{name}\]'"
    with pytest.raises(BlossomUserError, match=message):
        fused.check_fused_loss(name)


@pytest.mark.parametrize("name", ["liger"])
def test_cpu_is_refused_with_the_fix_and_nothing_runs(name, monkeypatch):
    monkeypatch.setattr(fused, "fused_loss_available", lambda _: True)
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True)
    message = rf"--loss {name} runs Triton kernels on a CUDA GPU only.*--loss chunked"
    with pytest.raises(BlossomUserError, match=message):
        fused.fused_linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3, 9]), name)
    assert hidden.grad is None and weight.grad is None


def test_unknown_fused_loss_and_option_values():
    with pytest.raises(BlossomUserError, match="unknown fused loss 'cce'"):
        fused.check_fused_loss("cce")  # measured, not offered (blossom_hf/fused_losses.py says why)
    assert RecTrainingConfig(loss="liger").loss == "liger"
    with pytest.raises(BlossomUserError, match="--loss must be 'full', 'chunked', 'sampled' or 'liger'"):
        RecTrainingConfig(loss="cce")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["liger"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_loss_matches_chunked_forward_and_backward(name, autocast):
    if not fused.fused_loss_available(name):
        pytest.skip(f"{fused.FUSED_LOSSES[name][1]} not installed")
    gen = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    tokens, items, d = 1000, 3707, 64
    weight = (torch.randn(items + 1, d, device="cuda", generator=gen) * 0.1).requires_grad_()
    hidden = torch.randn(tokens, d, device="cuda", generator=gen).requires_grad_()
    targets = torch.randint(1, items + 1, (tokens,), device="cuda", generator=gen)
    results = {}
    for variant in ("chunked", name):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if variant == "chunked":
                loss = chunked_cross_entropy(hidden, weight, targets)
            else:
                loss = fused.fused_linear_cross_entropy(hidden, weight, targets, name)
        results[variant] = (loss.detach(), *torch.autograd.grad(loss, (hidden, weight)))
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-5)  # bf16 products vs fp32
    ref, got = results["chunked"], results[name]
    torch.testing.assert_close(got[0].float(), ref[0].float(), **tol)
    for g, r, what in zip(got[1:], ref[1:], ("d hidden", "d weight"), strict=True):
        scale = r.abs().max()
        torch.testing.assert_close(g.float() / scale, r.float() / scale, **tol, msg=lambda m, w=what: f"{w}: {m}")
    assert float(got[2][0].abs().max()) == 0.0, "the padding row never competes, so it gets no gradient"


def test_train_command_with_a_fused_loss_on_the_cpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from hub_testing import write_interactions
    from test_cli import train_argv

    from blossom_hf import cli

    monkeypatch.setattr(fused, "fused_loss_available", lambda _: True)  # as if installed: the device decides
    log = write_interactions(tmp_path / "log.csv", n_users=20, items=list(range(1, 21)))
    output = tmp_path / "run"
    assert cli.main(train_argv(log, output, "--loss", "liger", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--loss liger runs Triton kernels on a CUDA GPU only" in err[-1] and "--loss chunked" in err[-1]
    assert not (output / "best_model").exists() and not (output / "metrics.json").exists()
