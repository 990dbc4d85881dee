"""Attention backends of BlossomRec: the call contract and the name -> backend mapping (docs/MODEL.md, "Backends").

A backend is a function with the transformers attention-function contract::

    fn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs: Unpack[BlossomAttentionKwargs])
        -> (attn_output [B, Q, H, D], attn_weights or None)

called by :class:`BlossomRecAttention` with

* ``query [B, H, Q, D]``, ``key``/``value [B, G, L, D]`` (RoPE applied to query and key). ``Q = L`` (every
  position) unless ``query_positions`` is given,
* ``attention_mask [B, L]`` bool, True at real items. Histories arrive *compacted*: the real items of
  each row come first, so the mask is ``arange(L) < lengths`` (also passed as ``lengths [B]``),
* ``scaling = 1/sqrt(D)``,
* the keyword arguments of :class:`BlossomAttentionKwargs`: ``lengths``, ``pattern`` (a
  :class:`BlossomPattern`), and for ``module.config.attention_type == "blossom"`` also
  ``compressed_key [B, G, L//b, D]`` and ``gate [B, H, Q, 2]`` (the sigmoid gates α, β). With
  ``attention_type == "full"`` the backend computes dense causal attention and these two are ``None``.
  ``query_positions [B, Q]`` (long) is passed only to backends registered with ``query_subset=True``: the
  queries are the positions listed there (the serving path asks for the last real position of each row);
  keys and compressed keys still cover all ``L`` positions.

It returns ``α·LTIS + β·STIS`` (or the dense output) per head, before the output projection, with exact
zeros at padded query rows. The registry is BlossomRec's own (it does not touch transformers' global
``ALL_ATTENTION_FUNCTIONS``, so registering "sdpa" here never changes another model). Each backend lives in
``attention_<name>.py`` (functional form, this adapter, its registration).

Functions registered with ``transformers.AttentionInterface`` (transformers' own contract: a 4-D boolean mask
``[B, 1, Q, L]``, True = attend) are accepted by name for ``attention_type="full"`` (the dense baseline) when
no BlossomRec backend has that name; BlossomRec's sparse attention needs a BlossomRec backend.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch

if TYPE_CHECKING:
    from .attention_patterns import BlossomPattern

logger = logging.getLogger(__name__)

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

#: the default backend (every device)
DEFAULT_BACKEND = "sdpa"


class BlossomAttentionKwargs(TypedDict, total=False):
    """The keyword arguments every BlossomRec backend receives (``**kwargs: Unpack[BlossomAttentionKwargs]``)."""

    lengths: torch.Tensor  # [B] real items per row (compacted layout)
    pattern: BlossomPattern  # the sparsity hyper-parameters, built once per forward
    compressed_key: torch.Tensor | None  # [B, G, L // b, D] (blossom) or None (full)
    gate: torch.Tensor | None  # [B, H, Q, 2] sigmoid gates (alpha, beta) (blossom) or None (full)
    query_positions: torch.Tensor | None  # [B, Q] positions of the queries; absent/None = every position


@dataclass(frozen=True)
class AttentionBackend:
    """A registered backend: its function, a one-line description, an availability probe and whether it takes
    ``query_positions`` (the serving path's one-query last layer)."""

    name: str
    function: AttentionFunction
    description: str = ""
    availability: Callable[[], str | None] | None = None  # returns None when usable, else the reason
    query_subset: bool = False

    def unavailable_reason(self) -> str | None:
        return None if self.availability is None else self.availability()


_BACKENDS: dict[str, AttentionBackend] = {}


def dispatch_attention_type(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
    kwargs: BlossomAttentionKwargs, *, blossom: Callable[..., torch.Tensor], full: Callable[..., torch.Tensor],
) -> tuple[torch.Tensor, None]:
    """The adapter body of a backend written as two functional forms: ``full(query, key, value, lengths, *,
    scaling, positions)`` for ``attention_type="full"``, else ``blossom(query, key, value, compressed_key, gate,
    lengths, *, scaling, pattern, positions)``, both ``[B, H, Q, D]``; returns ``([B, Q, H, D] contiguous, None)``."""
    positions = kwargs.get("query_positions")
    if module.config.attention_type == "full":
        out = full(query, key, value, kwargs["lengths"], scaling=scaling, positions=positions)
    else:
        out = blossom(query, key, value, kwargs["compressed_key"], kwargs["gate"], kwargs["lengths"],
                      scaling=scaling, pattern=kwargs["pattern"], positions=positions)
    return out.transpose(1, 2).contiguous(), None


def register_attention_backend(
    name: str,
    function: AttentionFunction,
    *,
    description: str = "",
    availability: Callable[[], str | None] | None = None,
    overwrite: bool = False,
    query_subset: bool = False,
) -> None:
    """Register ``function`` as BlossomRec attention backend ``name``.

    After registration ``BlossomRecConfig(attn_implementation=name)``,
    ``AutoModel.from_pretrained(path, attn_implementation=name)`` and
    ``model.set_attn_implementation(name)`` select it. ``availability`` is called when the backend is
    selected and returns ``None`` when it can run here, or a sentence saying why not. ``query_subset=True``
    declares that the function accepts ``query_positions`` (see the module docstring); without it the
    serving path runs the backend's last layer at every position and keeps the last real one.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an attention backend needs a non-empty string name")
    if not callable(function):
        raise TypeError(f"attention backend {name!r}: function must be callable, got {type(function).__name__}")
    if name in _BACKENDS and not overwrite:
        raise ValueError(f"attention backend {name!r} is already registered (pass overwrite=True to replace it)")
    _BACKENDS[name] = AttentionBackend(name, function, description, availability, bool(query_subset))


def unregister_attention_backend(name: str) -> None:
    """Remove a backend registered by :func:`register_attention_backend` (built-ins included)."""
    _BACKENDS.pop(name, None)


def list_attention_backends() -> dict[str, AttentionBackend]:
    """Every registered backend, available here or not."""
    return dict(_BACKENDS)


def available_attention_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name, backend in _BACKENDS.items() if backend.unavailable_reason() is None]


#: transformers' own AttentionInterface entries: they expect transformers' mask formats (padding masks, block
#: masks, paged caches), not the boolean mask BlossomRec passes, so they are not taken by name.
_TRANSFORMERS_BUILTINS = frozenset({"flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention",
                                    "paged|eager", "paged|sdpa", "paged|flash_attention_2", "sdpa", "eager"})


def _transformers_function(name: str) -> AttentionFunction | None:
    """A function a user registered under ``name`` with ``transformers.AttentionInterface``, if any."""
    if name in _TRANSFORMERS_BUILTINS:
        return None
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - very old transformers
        return None
    return ALL_ATTENTION_FUNCTIONS[name] if name in ALL_ATTENTION_FUNCTIONS else None


def resolve_attention_backend(name: str | None, attention_type: str = "blossom") -> str:
    """Check that ``name`` (None = "sdpa") can run here for ``attention_type``; return it or raise ValueError.

    Called once when a backend is set (config, ``from_pretrained``, ``set_attn_implementation``); layer calls
    only look the function up.
    """
    name = DEFAULT_BACKEND if name is None else name
    if not isinstance(name, str):
        raise ValueError(f"BlossomRec's attn_implementation must be a backend name, got {name!r}")
    backend = _BACKENDS.get(name)
    if backend is None and name in _TRANSFORMERS_BUILTINS:
        raise ValueError(
            f"{name!r} is one of transformers' own attention functions, which expect transformers' mask formats; "
            f"BlossomRec's backends are {available_attention_backends()} ('sdpa' runs PyTorch's flash/efficient "
            "kernels on CUDA)."
        )
    if backend is None:
        if _transformers_function(name) is not None:
            if attention_type == "full":
                return name
            raise ValueError(
                f"attention backend {name!r} is a transformers AttentionInterface function: it can serve "
                "attention_type='full' (dense causal attention) but not BlossomRec's sparse attention. Register a "
                "BlossomRec backend with blossom_hf.register_attention_backend(name, fn), or use one of "
                f"{available_attention_backends()}."
            )
        raise ValueError(
            f"Unknown BlossomRec attention backend {name!r}. Registered: {sorted(_BACKENDS)}; "
            f"available here: {available_attention_backends()}. Register your own with "
            "blossom_hf.register_attention_backend(name, fn)."
        )
    reason = backend.unavailable_reason()
    if reason is not None:
        raise ValueError(
            f"BlossomRec attention backend {name!r} is not available here: {reason} "
            f"Available here: {available_attention_backends()}."
        )
    return name


def get_attention_backend(name: str) -> AttentionBackend:
    """The backend registered as ``name`` (availability was checked when it was set), or a transformers
    ``AttentionInterface`` function wrapped for the dense baseline. Raises ValueError for an unknown name."""
    backend = _BACKENDS.get(name)
    if backend is not None:
        return backend
    function = _transformers_function(name)
    if function is None:
        resolve_attention_backend(name)  # raises the "unknown backend" message
    return AttentionBackend(name, _transformers_adapter(function), "transformers AttentionInterface function",
                            query_subset=True)


def get_attention_function(name: str) -> AttentionFunction:
    """The function of backend ``name`` (raises ValueError listing the registered backends)."""
    return get_attention_backend(name).function


def _transformers_adapter(function: AttentionFunction) -> AttentionFunction:
    """A transformers attention function called with a 4-D boolean causal mask over real keys."""

    def adapter(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if module.config.attention_type != "full":
            raise ValueError("a transformers AttentionInterface function only serves attention_type='full'")
        lengths = kwargs["lengths"]
        seq_len = key.shape[2]
        positions = kwargs.get("query_positions")
        if positions is None:
            positions = torch.arange(query.shape[2], device=query.device)[None, :]
        keys = torch.arange(seq_len, device=query.device)
        mask = (keys <= positions[..., None]) & (keys < lengths[:, None, None])  # [B, Q, L]
        out, weights = function(module, query, key, value, mask[:, None], scaling=scaling, dropout=dropout)
        real = positions < lengths[:, None]  # [B, Q]
        return torch.where(real[:, :, None, None], out, 0.0), weights

    return adapter


def __getattr__(name: str):
    """Backward compatibility: ``registry.eager_attention_forward`` / ``registry.sdpa_attention_forward`` now live
    in their backend files."""
    homes = {"eager_attention_forward": ".attention_eager", "sdpa_attention_forward": ".attention_sdpa"}
    if name in homes:
        return getattr(importlib.import_module(homes[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
