"""Fused linear + cross-entropy over the whole catalogue from a well-kept library (optional, CUDA only).

``"liger"`` -- Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (``pip install 'blossom_hf[liger]'``): the
log-sum-exp over items from ``hidden @ weight.T`` chunk by chunk of tokens in Triton kernels, the logits of
one chunk at a time, the gradients in the same pass (float32 accumulation). The value is the same mean
cross-entropy as :func:`blossom_hf.losses.chunked_cross_entropy`: item 0 (padding) never competes, so the
classifier is ``weight[1:]`` and the targets shift by one. Under autocast both operands are cast to the
autocast dtype (the products run there, as in the chunked loss).

Where it wins is a measurement (``python -m blossom_hf.benchmarks.fused_ce``; docs/BENCHMARKS.md, "Fused linear
cross-entropy"): at the ML-1M catalogue (3,707 items) the whole-model training step is about a quarter faster
than with the model's own logits and the loss uses a fraction of the memory; at 1,000,000 items it is about
6x slower than the chunked loss, so keep ``--loss chunked`` for huge catalogues. cut-cross-entropy was
measured too and is not offered: its item-embedding gradient deviates by up to a quarter of the largest
entry from the exact one (bf16 accumulation) and its backward refuses fp32.

It does not run on the CPU: ``--loss liger`` there is refused with the fix (``--loss chunked``), never
replaced silently.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from .errors import BlossomUserError

logger = logging.getLogger(__name__)

#: loss name -> (module to import, pip requirement)
FUSED_LOSSES: dict[str, tuple[str, str]] = {
    "liger": ("liger_kernel", "liger-kernel"),
}


def fused_loss_available(name: str) -> bool:
    """Whether the library behind ``name`` is importable (the GPU is checked when the loss runs)."""
    return _importable(FUSED_LOSSES[name][0])


@functools.cache
def _importable(module: str) -> bool:  # looked up once, not at every training step
    return importlib.util.find_spec(module) is not None


def classifier_operands(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden, weight[1:], targets - 1)`` in the autocast dtype (else hidden's): the operands of a fused
    linear cross-entropy over the real items (padding row 0 left out). Call with autocast disabled after it."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    return hidden.to(dtype).contiguous(), weight[1:].to(dtype), (targets - 1).long().contiguous()


def check_fused_loss(name: str, device: torch.device | str | None = None) -> None:
    """One-line error naming the fix when ``--loss name`` cannot run here (library missing, or no CUDA)."""
    if name not in FUSED_LOSSES:
        raise BlossomUserError(f"unknown fused loss {name!r}; choose one of {', '.join(sorted(FUSED_LOSSES))}")
    module, requirement = FUSED_LOSSES[name]
    if not fused_loss_available(name):
        raise BlossomUserError(f"--loss {name} needs the {requirement} package: pip install 'blossom_hf[{name}]' "
                               "(or train with --loss chunked, the exact loss without it)")  # fmt: skip
    if device is not None and torch.device(device).type != "cuda":
        where = torch.device(device).type
        raise BlossomUserError(f"--loss {name} runs Triton kernels on a CUDA GPU only, and this run is on {where}; "
                               "use --loss chunked (the same loss in PyTorch)")  # fmt: skip


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, implementation: str
) -> torch.Tensor:
    """Mean over tokens of ``logsumexp_{i>=1}(h . w_i) - h . w_target`` by ``implementation`` ("liger").

    Args:
        hidden: ``[T, d]`` states at the positions that have a target (CUDA).
        weight: ``[V, d]`` item embedding (row 0 = padding).
        targets: ``[T]`` item indices in ``1..V-1``.
    """
    check_fused_loss(implementation, hidden.device)
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected hidden [T, d] and targets [T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    h, classifier, shifted = classifier_operands(hidden, weight, targets)  # padding never competes
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(reduction="mean", accum_dtype=torch.float32)(classifier, h, shifted)
    return loss.float()


__all__ = ["FUSED_LOSSES", "check_fused_loss", "classifier_operands", "fused_loss_available",
           "fused_linear_cross_entropy"]
