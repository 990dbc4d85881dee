"""Fused linear + cross-entropy over the whole catalogue from two well-kept libraries (optional, CUDA only).

* ``"liger"`` -- Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (``pip install 'blossom_hf[liger]'``);
* ``"cce"`` -- Apple's cut-cross-entropy ``linear_cross_entropy`` (``pip install 'blossom_hf[cce]'``), called
  with ``filter_eps=None`` so its gradient is exact (its default skips small gradient entries).

Both compute the log-sum-exp over items from ``hidden @ weight.T`` tile by tile in Triton kernels, never
holding the ``T x V`` logits, like :func:`blossom_hf.losses.chunked_cross_entropy` does with PyTorch matmuls
chunk by chunk. The value is the same mean cross-entropy: item 0 (padding) never competes, so the classifier
is ``weight[1:]`` and the targets shift by one. Under autocast both operands are cast to the autocast dtype
(the products run there, as in the chunked loss); the libraries accumulate in float32.

Which one to use is a measurement (``python -m blossom_hf.benchmarks.fused_ce``; docs/BENCHMARKS.md, "Fused
linear cross-entropy"). Neither runs on the CPU: ``--loss liger`` / ``--loss cce`` there is refused with the
fix (``--loss chunked``), never replaced silently.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from .errors import BlossomUserError

logger = logging.getLogger(__name__)

#: loss name -> (module to import, pip requirement)
FUSED_LOSSES: dict[str, tuple[str, str]] = {
    "liger": ("liger_kernel", "liger-kernel"),
    "cce": ("cut_cross_entropy", "cut-cross-entropy"),
}


def fused_loss_available(name: str) -> bool:
    """Whether the library behind ``name`` is importable (the GPU is checked when the loss runs)."""
    return importlib.util.find_spec(FUSED_LOSSES[name][0]) is not None


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
    """Mean over tokens of ``logsumexp_{i>=1}(h . w_i) - h . w_target`` by ``implementation`` ("liger", "cce").

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
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type=device_type, enabled=False):
        h = hidden.to(dtype).contiguous()
        classifier = weight[1:].to(dtype)  # padding never competes
        shifted = (targets - 1).long().contiguous()
        if implementation == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            loss = LigerFusedLinearCrossEntropyLoss(reduction="mean", accum_dtype=torch.float32)(
                classifier, h, shifted
            )
        else:
            from cut_cross_entropy import linear_cross_entropy

            loss = linear_cross_entropy(h, classifier, shifted, reduction="mean", filter_eps=None, impl="cce")
    return loss.float()


__all__ = ["FUSED_LOSSES", "check_fused_loss", "fused_loss_available", "fused_linear_cross_entropy"]
