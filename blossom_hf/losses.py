"""Catalogue-size-independent training losses, computed from ``last_hidden_state`` and the tied item embedding.

* :func:`chunked_cross_entropy` -- exact cross-entropy over all items, computed chunk by chunk of items by a custom
  autograd function that never holds more than ``tokens x chunk`` logits (forward and backward);
* :func:`sampled_softmax_loss` -- sampled softmax against uniform negatives shared by the batch (accidental hits
  masked; with a uniform proposal the logQ correction is a constant and drops out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean over tokens of ``logsumexp_{i>=1}(h . w_i) - h . w_target``, item chunk by item chunk.

    Products run in ``compute_dtype``; the log-sum-exp and the gradients accumulate in at least float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, compute_dtype):  # type: ignore[override]
        accumulate = torch.promote_types(compute_dtype, torch.float32)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            lse = torch.full((h.shape[0],), float("-inf"), device=h.device, dtype=accumulate)
            for start in range(1, weight.shape[0], chunk_size):  # column 0 (padding) never competes
                logits = (h @ weight[start : start + chunk_size].to(compute_dtype).t()).to(accumulate)
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
            target_logits = (hidden.to(accumulate) * weight[targets].to(accumulate)).sum(dim=1)
            loss = (lse - target_logits).mean()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk_size, compute_dtype, accumulate = ctx.chunk_size, ctx.compute_dtype, lse.dtype
        scale = grad_output.to(accumulate) / hidden.shape[0]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=accumulate)
            grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=accumulate)
            for start in range(1, weight.shape[0], chunk_size):
                w = weight[start : start + chunk_size].to(compute_dtype)
                probabilities = torch.exp((h @ w.t()).to(accumulate) - lse[:, None]) * scale
                grad_hidden += (probabilities.to(compute_dtype) @ w).to(accumulate)
                grad_weight[start : start + chunk_size] += (probabilities.t().to(compute_dtype) @ h).to(accumulate)
            grad_hidden -= scale * weight[targets].to(accumulate)
            grad_weight.index_add_(0, targets, -scale * hidden.to(accumulate))
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    max_chunk_elements: int = 1 << 26,
) -> torch.Tensor:
    """Exact cross-entropy over all items (padding 0 excluded) without materialising ``T x V`` logits.

    Args:
        hidden: ``[T, d]`` states at the positions that have a target.
        weight: ``[V, d]`` item embedding (row 0 = padding).
        targets: ``[T]`` item indices in ``1..V-1``.
        chunk_size: items per chunk; default: ``max_chunk_elements // T`` (at least 128).

    Peak extra memory is about ``T x chunk_size`` floats (plus ``V x d`` for the weight gradient).
    Under autocast the chunk products run in the autocast dtype (e.g. bf16) with float32 accumulation
    of the log-sum-exp and of the gradients.
    """
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected hidden [T, d] and targets [T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if chunk_size is None:
        chunk_size = max(128, max_chunk_elements // hidden.shape[0])
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, int(chunk_size), compute_dtype)


def sampled_softmax_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, num_negatives: int
) -> torch.Tensor:
    """Softmax over the target and ``num_negatives`` uniform negatives shared by the batch.

    A negative equal to a row's target is masked for that row. The proposal is uniform, so the logQ
    correction is the same constant for every candidate and cancels.
    """
    negatives = torch.randint(1, weight.shape[0], (num_negatives,), device=hidden.device)
    positive = (hidden * weight[targets].to(hidden.dtype)).sum(dim=1, keepdim=True)
    negative = hidden @ weight[negatives].to(hidden.dtype).t()
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))


def positions_with_targets(
    last_hidden_state: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States and targets where a loss applies: every ``labels > 0`` of ``[B, L]`` labels, or the last
    real position of each row for ``[B]`` labels."""
    if labels.dim() == 2:
        keep = labels > 0
        return last_hidden_state[keep], labels[keep]
    real = input_ids != 0
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(real, positions, -1).amax(dim=1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    keep = labels > 0
    return last_hidden_state[rows, last][keep], labels[keep]
