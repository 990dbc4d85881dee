"""Attention backends of BlossomRec, by name.

A backend is a function with the transformers attention-function contract::

    fn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs)
        -> (attn_output [B, L, H, D], attn_weights or None)

called by :class:`BlossomRecAttention` with

* ``query [B, H, L, D]``, ``key``/``value [B, G, L, D]`` (RoPE applied to query and key),
* ``attention_mask [B, L]`` bool, True at real items. Histories arrive *compacted*: the real items of
  each row come first, so the mask is ``arange(L) < lengths`` (also passed as ``lengths [B]``),
* ``scaling = 1/sqrt(D)``,
* keyword arguments ``lengths``, ``pattern`` (a :class:`BlossomPattern`), and for
  ``module.config.attention_type == "blossom"`` also ``compressed_key [B, G, L//b, D]`` and
  ``gate [B, H, L, 2]`` (the sigmoid gates α, β). With ``attention_type == "full"`` the backend computes
  dense causal attention and these two are ``None``.

It returns ``α·LTIS + β·STIS`` (or the dense output) per head, before the output projection, with exact
zeros at padded query rows. The registry is BlossomRec's own (it does not touch transformers' global
``ALL_ATTENTION_FUNCTIONS``, so registering "sdpa" here never changes another model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention_eager import eager_blossom_attention, eager_full_attention
from .attention_sdpa import sdpa_blossom_attention, sdpa_full_attention

logger = logging.getLogger(__name__)

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered backend: its function, a one-line description and an availability probe."""

    name: str
    function: AttentionFunction
    description: str = ""
    availability: Callable[[], str | None] | None = None  # returns None when usable, else the reason

    def unavailable_reason(self) -> str | None:
        return None if self.availability is None else self.availability()


_BACKENDS: dict[str, AttentionBackend] = {}


def register_attention_backend(
    name: str,
    function: AttentionFunction,
    *,
    description: str = "",
    availability: Callable[[], str | None] | None = None,
    overwrite: bool = False,
) -> None:
    """Register ``function`` as BlossomRec attention backend ``name``.

    After registration ``BlossomRecConfig(attn_implementation=name)``,
    ``AutoModel.from_pretrained(path, attn_implementation=name)`` and
    ``model.set_attn_implementation(name)`` select it. ``availability`` is called when the backend is
    selected and returns ``None`` when it can run here, or a sentence saying why not.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an attention backend needs a non-empty string name")
    if not callable(function):
        raise TypeError(f"attention backend {name!r}: function must be callable, got {type(function).__name__}")
    if name in _BACKENDS and not overwrite:
        raise ValueError(f"attention backend {name!r} is already registered (pass overwrite=True to replace it)")
    _BACKENDS[name] = AttentionBackend(name, function, description, availability)


def unregister_attention_backend(name: str) -> None:
    """Remove a backend registered by :func:`register_attention_backend` (built-ins included)."""
    _BACKENDS.pop(name, None)


def list_attention_backends() -> dict[str, AttentionBackend]:
    """Every registered backend, available here or not."""
    return dict(_BACKENDS)


def available_attention_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name, backend in _BACKENDS.items() if backend.unavailable_reason() is None]


def resolve_attention_backend(name: str | None) -> str:
    """Check that ``name`` (None = "sdpa") is registered and usable here; return it or raise ValueError."""
    name = "sdpa" if name is None else name
    if not isinstance(name, str):
        raise ValueError(f"BlossomRec's attn_implementation must be a backend name, got {name!r}")
    backend = _BACKENDS.get(name)
    if backend is None:
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


def get_attention_function(name: str) -> AttentionFunction:
    """The function of backend ``name`` (raises ValueError listing the registered backends)."""
    return _BACKENDS[resolve_attention_backend(name)].function


# --------------------------------------------------------------------------------------------------
# built-in backends
# --------------------------------------------------------------------------------------------------
def _run_functional(module, query, key, value, blossom_fn, full_fn, kwargs) -> tuple[torch.Tensor, None]:
    lengths = kwargs["lengths"]
    if module.config.attention_type == "full":
        out = full_fn(query, key, value, lengths, scaling=module.scaling)
    else:
        out = blossom_fn(
            query, key, value, kwargs["compressed_key"], kwargs["gate"], lengths,
            scaling=module.scaling, pattern=kwargs["pattern"],
        )
    return out.transpose(1, 2).contiguous(), None


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference backend: dense masks, fp32 (``attention_eager``)."""
    return _run_functional(module, query, key, value, eager_blossom_attention, eager_full_attention, kwargs)


def sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Gathered key sets through ``scaled_dot_product_attention`` (``attention_sdpa``)."""
    return _run_functional(module, query, key, value, sdpa_blossom_attention, sdpa_full_attention, kwargs)


register_attention_backend(
    "eager", eager_attention_forward,
    description="PyTorch reference: exact key sets as dense L x L masks, fp32 (O(L^2) memory)",
)
register_attention_backend(
    "sdpa", sdpa_attention_forward,
    description="per-query gathered key sets through scaled_dot_product_attention (linear memory)",
)
