"""Serving exports of a BlossomRec model: the scoring path as a plain module, ``torch.compile``, ``torch.export``
and ONNX (docs/MODEL.md, "Serving").

The scoring path is ``model(input_ids, output_last_hidden_state=False).logits``: the last layer computes only the
last real position of each history, and under tracing the forward has no data-dependent Python checks (the
compacted length is static, ``min(L, max_history_length)``). The input checks of eager mode are not part of a
traced graph: run :meth:`BlossomRecModel.validate_inputs` (or ``recommend()``) on untrusted input first.

Only the PyTorch backends ("sdpa", "eager") can be traced; a model on another backend (e.g. "triton") is refused
with a message instead of being switched silently.

>>> from blossom_hf.serving import export_onnx
>>> export_onnx(model, "blossomrec.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ScoringModule", "compile_for_serving", "export_program", "export_onnx", "check_finite_weights"]

_TRACEABLE_BACKENDS = ("sdpa", "eager")


class ScoringModule(nn.Module):
    """``input_ids [B, L]`` (0 = padding) -> ``scores [B, vocab_size]`` of the next item (column 0, padding, is
    ``-inf``); with ``top_k`` -> ``(scores [B, k], indices [B, k])``, best first."""

    def __init__(self, model: nn.Module, top_k: int | None = None):
        super().__init__()
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or not 1 <= top_k <= model.config.num_items):
            raise ValueError(f"top_k must be an integer in [1, {model.config.num_items}], got {top_k!r}")
        self.model = model
        self.top_k = top_k

    def forward(self, input_ids: torch.Tensor):
        scores = self.model(input_ids=input_ids, output_last_hidden_state=False).logits
        if self.top_k is None:
            return scores
        top = scores.topk(self.top_k, dim=-1)
        return top.values, top.indices


def _check_traceable(model: nn.Module) -> None:
    backend = model.config._attn_implementation
    if backend not in _TRACEABLE_BACKENDS:
        raise ValueError(
            f"the model uses the {backend!r} attention backend, which cannot be traced for export; switch first "
            f"with model.set_attn_implementation('sdpa') (same weights, same scores up to rounding)"
        )


def check_finite_weights(model: nn.Module) -> None:
    """Raise ValueError naming the first parameter holding NaN/inf (a diverged run must not be served)."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise ValueError(f"parameter {name} holds NaN/inf values: refusing to export a non-finite model")


def _example_input(model: nn.Module, batch: int, history_length: int | None) -> torch.Tensor:
    length = int(history_length or model.config.max_history_length)
    if length < 1:
        raise ValueError(f"history_length must be a positive integer, got {history_length!r}")
    generator = torch.Generator().manual_seed(0)
    device = model.item_embeddings.weight.device
    ids = torch.randint(1, model.config.vocab_size, (batch, length), generator=generator)
    ids[0, : length // 2] = 0  # one left-padded row
    return ids.to(device)


def compile_for_serving(model: nn.Module, top_k: int | None = None, **compile_kwargs) -> nn.Module:
    """``torch.compile(ScoringModule(model), fullgraph=True, **compile_kwargs)`` (the scoring path has no graph
    break with the "sdpa" and "eager" backends)."""
    _check_traceable(model)
    compile_kwargs.setdefault("fullgraph", True)
    return torch.compile(ScoringModule(model.eval(), top_k).eval(), **compile_kwargs)


def export_program(
    model: nn.Module, history_length: int | None = None, top_k: int | None = None, max_batch: int = 65536
) -> torch.export.ExportedProgram:
    """``torch.export`` of the scoring path with a dynamic batch dimension (the history length is fixed:
    ``history_length``, default the model's window; pad shorter histories with 0, left or right)."""
    _check_traceable(model)
    model.eval()
    example = _example_input(model, 2, history_length)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(ScoringModule(model, top_k).eval(), (example,), dynamic_shapes=({0: batch},))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    history_length: int | None = None,
    top_k: int | None = None,
    opset_version: int | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the scoring path as an ONNX model (``torch.onnx.export(..., dynamo=True)``, dynamic batch).

    Inputs: ``input_ids`` int64 ``[batch, history_length]`` (0 = padding). Outputs: ``scores`` float
    ``[batch, vocab_size]``, or ``scores, indices`` ``[batch, top_k]`` with ``top_k``. The file is written to a
    staging name beside ``path`` and renamed when complete (an interrupted export never leaves a partial file).
    With ``verify`` (needs onnxruntime) the exported graph is run on a sample batch and must give the same
    top-10 items as PyTorch, else ValueError. Needs the ``onnx`` extra (``pip install blossom_hf[onnx]``).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'blossom_hf[onnx]' ({err})") from None
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"folder {target.parent} does not exist")
    _check_traceable(model)
    check_finite_weights(model)
    model.eval()
    example = _example_input(model, 2, history_length)
    module = ScoringModule(model, top_k).eval()
    outputs = ["scores"] if top_k is None else ["scores", "indices"]
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, dynamic_shapes=({0: batch},), input_names=["input_ids"],
            output_names=outputs, opset_version=opset_version, verbose=False,
        )
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        program.save(staging, external_data=False)
        if verify:
            _verify_onnx(staging, module, model, history_length)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (scoring path, dynamic batch, history length %d)", target, example.shape[1])
    return target


def _verify_onnx(path: str, module: ScoringModule, model: nn.Module, history_length: int | None) -> None:
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed: the ONNX export was not verified (pip install onnxruntime)")
        return
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    sample = _example_input(model, 5, history_length)
    sample[3, 1:] = 0  # a one-item history
    got = session.run(None, {"input_ids": sample.cpu().numpy()})[0]
    with torch.no_grad():
        want = module(sample)
    want = want if module.top_k is None else want[0]
    got_t = torch.from_numpy(got)
    if module.top_k is None:
        k = min(10, model.config.num_items)
        same = torch.equal(got_t[:, 1:].topk(k).indices, want.cpu()[:, 1:].topk(k).indices)
    else:
        same = torch.allclose(got_t, want.cpu(), rtol=1e-4, atol=1e-4)
    if not same:
        raise ValueError(f"the ONNX export of {type(model).__name__} does not reproduce PyTorch's top items on a "
                         "sample batch; please report this (torch and onnxruntime versions)")
