"""Optional CUDA-graph serving mode: the serving forward (``model(ids, output_last_hidden_state=False).logits``,
what ``recommend()`` runs) captured once per batch shape and replayed.

At serving batch sizes a BlossomRec forward is bound by the host issuing ~100 small kernels (docs/BENCHMARKS.md,
"GPU inference"), not by the GPU. A CUDA graph replays all of them with one launch. The price: the shape is fixed
(``[batch_size, seq_len]``; pad the last batch), the weights must not be replaced (in-place updates are seen), and
the result lives in a static buffer (copied out unless ``copy=False``).

The captured function is the forward's serving branch with the static compaction that ``torch.compile`` uses
(``compact_histories(..., static=True)``: width ``min(seq_len, max_history_length)``), so the scores equal
``model(ids, output_last_hidden_state=False).logits`` up to the rounding of a different padded width. The input
checks of the eager forward (id range, empty rows, dtype, shape) run before every replay, outside the graph.

    scorer = CUDAGraphScorer(model, batch_size=256, seq_len=200, autocast_dtype=torch.bfloat16)
    scores = scorer(input_ids)          # [256, vocab_size], column 0 = -inf

Works with any backend whose serving forward has no host synchronisation (triton, sdpa); a backend that needs
one fails the capture with a RuntimeError naming the backend.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from .models.blossomrec.inputs_blossomrec import compact_histories, validate_input_ids

__all__ = ["CUDAGraphScorer"]

logger = logging.getLogger(__name__)


class CUDAGraphScorer:
    """Scores of every item at the last real position of each history, by replaying a captured CUDA graph.

    Args:
        model: a :class:`~blossom_hf.BlossomRecModel` on a CUDA device (put in eval mode here).
        batch_size, seq_len: the one input shape ``[batch_size, seq_len]`` this scorer accepts.
        autocast_dtype: run the forward under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``), or
            ``None`` for the model's own dtype.
    """

    def __init__(self, model, batch_size: int, seq_len: int, autocast_dtype: torch.dtype | None = None):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        device = next(model.parameters()).device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDAGraphScorer needs a model on a CUDA device, got {device}; on the CPU call the "
                               "model (or recommend()) directly")
        self.model = model.eval()
        self.shape = (batch_size, seq_len)
        self.autocast_dtype = autocast_dtype
        self.device = device
        # a valid dummy batch (item 1 everywhere) for warm-up and capture; replays copy the real ids in
        self._ids = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
        self._graph = torch.cuda.CUDAGraph()
        with torch.no_grad():
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up off the default stream (compiles kernels, fills caches)
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            try:
                with torch.cuda.graph(self._graph):
                    self._scores = self._forward()
            except RuntimeError as error:
                raise RuntimeError(
                    f"CUDA-graph capture of the serving forward failed with attn_implementation="
                    f"{model.config._attn_implementation!r} ({error}); call the model directly instead") from error
        logger.info("captured the serving forward for input shape %s (%s)", self.shape,
                    autocast_dtype or "model dtype")

    def _forward(self) -> torch.Tensor:
        model = self.model
        autocast = (contextlib.nullcontext() if self.autocast_dtype is None
                    else torch.autocast("cuda", dtype=self.autocast_dtype))
        with autocast:
            compact = compact_histories(self._ids, self._ids != 0, model.config.max_history_length, static=True)
            hidden, _ = model.encode(compact, last_only=True)
            return model.score_items(hidden[:, 0])

    def __call__(self, input_ids: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """``input_ids [batch_size, seq_len]`` (0 = padding, left or right) -> scores ``[batch_size, vocab_size]``.

        With ``copy=False`` the returned tensor is the graph's output buffer, overwritten by the next call."""
        if not isinstance(input_ids, torch.Tensor) or tuple(input_ids.shape) != self.shape:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"this CUDAGraphScorer was captured for input shape {self.shape}, got {shape}; pad the "
                             "batch to that shape or build a scorer for the new one")
        validate_input_ids(input_ids, self.model.config.vocab_size, None)
        self._ids.copy_(input_ids, non_blocking=True)
        self._graph.replay()
        return self._scores.clone() if copy else self._scores
