"""Ranking evaluation: full ranking and sampled ``uniN`` ranking of one held-out item per user.

Protocols (``docs/PROTOCOL.md``):

* ``"full"`` (default): the target is ranked against every item; the padding id 0 never counts.
  Items of the user's history are NOT removed (as in RecBole) unless ``exclude_history=True``, which
  removes every item of the (whole, untruncated) input history except the target itself.
* ``"uniN"`` (e.g. ``"uni100"``, the paper's): the target is ranked against ``N`` negatives drawn
  uniformly, without replacement, from the items the user never interacted with (in any split).
  RecBole redraws them, with replacement, at every evaluation; here they are drawn ONCE from a fixed
  seed by :func:`sample_negatives` and reused, so every model and every epoch is ranked against the
  same candidates. (With replacement RecBole's "uni100" holds <= 100 distinct negatives.) The draw is
  vectorised and cached on disk under a key made of the histories' bytes, the users, N and the seed,
  so a second run on the same data reads it back; ``N`` must be smaller than the catalogue.

Ties are pessimistic: the target ranks BELOW every item with an equal score, i.e.
``rank = #{items i != target : score_i >= score_target} + 1``. A NaN target score gets the worst rank.
(``torch.topk`` in RecBole breaks ties in no specified order.) Scores are computed in float32 by default:
bfloat16 scores collide often, and under the pessimistic rule collisions cost rank.

Batched: at most ``batch_size x (n_items + 1)`` scores exist at a time, on the model's device.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xxhash
from torch import nn
from tqdm.auto import tqdm

from ..data.collator import pack_histories
from ..data.splits import RankingExamples
from .metrics import DEFAULT_CUTOFFS, metrics_from_ranks

logger = logging.getLogger(__name__)

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""Maps ``input_ids [B, L]`` (right-padded, on the evaluation device) to scores ``[B, n_items + 1]``."""


@dataclass(frozen=True)
class Protocol:
    """A ranking protocol: ``full`` or ``uniN`` (``num_negatives = N``)."""

    name: str
    num_negatives: int | None = None

    @property
    def is_full(self) -> bool:
        return self.num_negatives is None


def parse_protocol(name: str | Protocol) -> Protocol:
    """``"full"`` or ``"uniN"`` (``N >= 1``) -> :class:`Protocol`."""
    if isinstance(name, Protocol):
        return name
    text = str(name).strip().lower()
    if text == "full":
        return Protocol("full")
    match = re.fullmatch(r"uni(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return Protocol(text, int(match.group(1)))
    raise ValueError(f"unknown ranking protocol {name!r}; use 'full' or 'uniN' such as 'uni100'")


@dataclass
class RankingResult:
    """Ranks of every evaluated example and the metrics computed from them."""

    protocol: str
    ranks: np.ndarray
    metrics: dict[str, float]
    seconds: float
    options: dict[str, object] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.ranks.size)


# --------------------------------------------------------------------------------------------------
# ranks from scores


def full_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pessimistic 1-based rank of ``targets [B]`` among all items of ``scores [B, V]``.

    Column 0 (padding) is ignored. Ties count against the target: ``rank = #{i >= 1, i != t :
    s_i >= s_t} + 1``. A NaN target score gets rank ``V - 1`` (the worst).
    """
    target_scores = scores.gather(1, targets[:, None])
    ranks = (scores[:, 1:] >= target_scores).sum(dim=1)  # counts the target itself, so ranks start at 1
    worst = torch.full_like(ranks, scores.shape[1] - 1)
    return torch.where(torch.isnan(target_scores[:, 0]), worst, ranks)


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Pessimistic 1-based rank of ``targets [B]`` among ``negatives [B, N]`` (id 0 = no candidate).

    ``rank = #{negatives n : s_n >= s_t} + 1``; a NaN target score gets rank ``N + 1``.
    """
    target_scores = scores.gather(1, targets[:, None])
    negative_scores = scores.gather(1, negatives)
    beats = (negative_scores >= target_scores) & (negatives != 0)
    ranks = beats.sum(dim=1) + 1
    worst = torch.full_like(ranks, negatives.shape[1] + 1)
    return torch.where(torch.isnan(target_scores[:, 0]), worst, ranks)


# --------------------------------------------------------------------------------------------------
# negatives


_NEGATIVES_VERSION = 1  # bump if the draw below changes


def check_num_negatives(num_negatives: int, n_items: int) -> None:
    """``uniN`` needs ``1 <= N < n_items`` (the target itself is never a negative)."""
    if num_negatives < 1:
        raise ValueError(f"uniN needs N >= 1 negatives, got {num_negatives}")
    if num_negatives >= n_items:
        raise ValueError(
            f"uni{num_negatives} asks for {num_negatives} negatives per user but the catalogue has only "
            f"{n_items} items (the target excluded, at most {n_items - 1}): choose N < {n_items} or use 'full'"
        )


def negatives_cache_dir() -> Path:
    """``$BLOSSOM_HF_CACHE/negatives`` if set, else ``<datasets cache>/blossom_hf/negatives``."""
    root = os.environ.get("BLOSSOM_HF_CACHE")
    if root:
        return Path(root) / "negatives"
    from ..data.formats import default_cache_root

    return default_cache_root() / "negatives"


def sample_negatives(
    offsets: np.ndarray,
    items: np.ndarray,
    n_items: int,
    users: np.ndarray,
    num_negatives: int,
    seed: int,
    cache_dir: str | Path | None | bool = None,
) -> np.ndarray:
    """Draw, once, ``num_negatives`` distinct items per user from the items it never interacted with.

    Args:
        offsets, items: every user's full history in CSR form (``SequenceData.offsets/items``).
        n_items: items are ``1..n_items``.
        users: the user numbers to draw for (row ``i`` of the result belongs to ``users[i]``).
        num_negatives: N (``1 <= N < n_items``).
        seed: the draw is a pure function of (data, users, N, seed).
        cache_dir: where drawn negatives are kept (``.npy`` named by a hash of the histories, the users,
            N and the seed); ``None``: :func:`negatives_cache_dir`; ``False``: no cache.

    Returns:
        int64 ``[len(users), num_negatives]``. A user who has seen all but fewer than N items gets all
        the rest, padded with 0 (no candidate), which :func:`sampled_ranks` ignores.
    """
    check_num_negatives(num_negatives, n_items)
    users = np.asarray(users, dtype=np.int64)
    cache_file = None
    if cache_dir is not False:
        key = xxhash.xxh3_128()
        for array, dtype in ((offsets, np.int64), (items, np.int32), (users, np.int64)):
            key.update(np.ascontiguousarray(array, dtype=dtype).data)
        key.update(f"{n_items}:{num_negatives}:{seed}:{_NEGATIVES_VERSION}".encode())
        root = negatives_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        cache_file = root / f"uni{num_negatives}-{key.hexdigest()}.npy"
        if cache_file.is_file():
            try:
                cached = np.load(cache_file, allow_pickle=False)
                if cached.shape == (len(users), num_negatives):
                    logger.info("uni%d negatives read from the cache %s", num_negatives, cache_file)
                    return cached
            except (OSError, ValueError) as error:
                logger.warning("Ignoring the unreadable negatives cache %s (%s)", cache_file, error)
    started = time.perf_counter()
    out = _draw_negatives(offsets, items, n_items, users, num_negatives, seed)
    logger.info("Drew uni%d negatives for %d users in %.1f s", num_negatives, len(users), time.perf_counter() - started)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            staging = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.partial.npy")
            np.save(staging, out)
            os.replace(staging, cache_file)
        except OSError as error:
            logger.warning("Could not cache the negatives under %s (%s)", cache_file.parent, error)
    return out


def _draw_negatives(
    offsets: np.ndarray, items: np.ndarray, n_items: int, users: np.ndarray, num_negatives: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    users = np.asarray(users, dtype=np.int64)
    n_rows = len(users)
    lengths = offsets[users + 1] - offsets[users]
    within = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    seen_rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    seen_items = items[np.repeat(offsets[users], lengths) + within].astype(np.int64)
    stride = n_items + 1
    seen_keys = np.sort(seen_rows * stride + seen_items)
    seen_keys = seen_keys[np.r_[True, seen_keys[1:] != seen_keys[:-1]]] if seen_keys.size else seen_keys
    available = n_items - np.bincount(seen_keys // stride, minlength=n_rows)
    out = np.zeros((n_rows, num_negatives), dtype=np.int64)

    # Users with few unseen items: draw from their explicit complement (cheap, rare).
    dense = available < max(num_negatives * 4, int(0.05 * n_items))
    for row in np.flatnonzero(dense):
        seen = seen_keys[(seen_keys >= row * stride) & (seen_keys < (row + 1) * stride)] - row * stride
        unseen = np.setdiff1d(np.arange(1, n_items + 1), seen, assume_unique=True)
        take = min(num_negatives, unseen.size)
        out[row, :take] = rng.choice(unseen, size=take, replace=False)

    # Everyone else: vectorised rejection sampling, rows grouped by how many draws they need
    # (expected N * n_items / available, with a margin; rows that fall short are drawn again).
    pending = np.flatnonzero(~dense)
    while pending.size:
        needed = num_negatives * n_items / available[pending] * 1.5 + 16
        bucket = np.ceil(np.log2(needed)).astype(np.int64)
        still: list[np.ndarray] = []
        for level in np.unique(bucket):
            width = int(min(2**level, 64 * num_negatives + 64))
            group = pending[bucket == level]
            rows_per_chunk = max(1, (1 << 22) // width)
            for start in range(0, group.size, rows_per_chunk):
                rows = group[start : start + rows_per_chunk]
                # only these rows' seen items: a small, cache-friendly slice (the rows of a chunk are close together)
                low = np.searchsorted(seen_keys, rows.min() * stride)
                high = np.searchsorted(seen_keys, (rows.max() + 1) * stride)
                drawn, enough = _draw_unseen(rng, rows, width, num_negatives, n_items, seen_keys[low:high])
                out[rows[enough]] = drawn[enough]
                still.append(rows[~enough])
        pending = np.concatenate(still)
    return out


def _draw_unseen(
    rng: np.random.Generator,
    rows: np.ndarray,
    width: int,
    num_negatives: int,
    n_items: int,
    seen_keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``width`` uniform draws per row; keep the first ``num_negatives`` unseen, distinct ones."""
    stride = n_items + 1
    candidates = rng.integers(1, n_items + 1, size=(rows.size, width), dtype=np.int64)
    keys = rows[:, None] * stride + candidates
    if seen_keys.size:
        where = np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)
        ok = seen_keys[where] != keys
    else:
        ok = np.ones(keys.shape, dtype=bool)
    order = np.argsort(candidates, axis=1, kind="stable")
    ordered = np.take_along_axis(candidates, order, axis=1)
    repeat_sorted = np.zeros_like(ok)
    repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    repeat = np.empty_like(ok)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)  # later copies of a value are repeats
    ok &= ~repeat
    enough = ok.sum(axis=1) >= num_negatives
    first_ok = np.argsort(~ok, axis=1, kind="stable")[:, :num_negatives]
    return np.take_along_axis(candidates, first_ok, axis=1), enough


# --------------------------------------------------------------------------------------------------
# evaluation loop


def model_scorer(model: nn.Module) -> Scorer:
    """Scores from ``model(input_ids=...).logits`` (``[B, vocab_size]``, column 0 = padding), in float32."""

    def score(input_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids).logits.float()

    return score


@torch.inference_mode()
def evaluate_ranking(
    model_or_scorer: nn.Module | Scorer,
    examples: RankingExamples,
    *,
    max_length: int,
    n_items: int,
    protocol: str | Protocol = "full",
    negatives: np.ndarray | None = None,
    exclude_history: bool = False,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    cutoffs: Iterable[int] = DEFAULT_CUTOFFS,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    description: str | None = None,
) -> RankingResult:
    """Rank each example's target and compute HR/Recall/MRR/NDCG@K (pessimistic ties, see module doc).

    Args:
        model_or_scorer: a model returning ``.logits [B, n_items + 1]`` (put in eval mode for the call),
            or a :data:`Scorer`.
        examples: histories and targets (e.g. ``split.validation()``).
        max_length: the model's history window; inputs keep their most recent ``max_length`` items.
        n_items: number of real items (scores have ``n_items + 1`` columns).
        protocol: ``"full"`` or ``"uniN"``.
        negatives: for ``uniN``: ``[len(examples), N]`` from :func:`sample_negatives`, drawn once.
        exclude_history: full ranking only: drop the user's history items (never the target).
        batch_size: examples scored at once (``batch_size x (n_items + 1)`` floats on the device).
        device: where to score; default: the model's device (CPU for a plain scorer).
        autocast_dtype: run the model under autocast with this dtype (default: float32, no autocast).
        progress: show a tqdm bar.
    """
    protocol = parse_protocol(protocol)
    if not protocol.is_full:
        check_num_negatives(protocol.num_negatives, n_items)
        if negatives is None:
            raise ValueError(f"protocol {protocol.name!r} needs negatives drawn once with sample_negatives()")
        if negatives.shape != (len(examples), protocol.num_negatives):
            raise ValueError(
                f"negatives have shape {negatives.shape}, expected "
                f"({len(examples)}, {protocol.num_negatives}) for protocol {protocol.name!r}"
            )
    if exclude_history and not protocol.is_full:
        logger.info("exclude_history has no effect on %s: negatives never include seen items", protocol.name)
    model = model_or_scorer if isinstance(model_or_scorer, nn.Module) else None
    scorer = model_scorer(model) if model is not None else model_or_scorer
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    started = time.perf_counter()
    rank_chunks: list[np.ndarray] = []
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    try:
        bar = tqdm(
            range(0, len(examples), batch_size),
            desc=description or f"ranking ({protocol.name})",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            index = np.arange(start, min(start + batch_size, len(examples)))
            input_ids = pack_histories(examples.items, examples.starts[index], examples.ends[index], max_length)
            input_ids = torch.from_numpy(input_ids).to(device, non_blocking=True)
            targets = torch.from_numpy(examples.targets[index]).to(device)
            with amp:
                scores = scorer(input_ids)
            scores = scores.float()
            if scores.shape != (len(index), n_items + 1):
                raise ValueError(
                    f"the scorer returned shape {tuple(scores.shape)}, expected ({len(index)}, {n_items + 1})"
                )
            if protocol.is_full:
                if exclude_history:
                    _mask_history(scores, examples, index, targets)
                ranks = full_ranks(scores, targets)
            else:
                batch_negatives = torch.from_numpy(negatives[index]).to(device)
                ranks = sampled_ranks(scores, targets, batch_negatives)
            rank_chunks.append(ranks.cpu().numpy())
    finally:
        if model is not None:
            model.train(was_training)
    ranks = np.concatenate(rank_chunks) if rank_chunks else np.zeros(0, dtype=np.int64)
    seconds = time.perf_counter() - started
    metrics = metrics_from_ranks(ranks, cutoffs) if ranks.size else {}
    return RankingResult(
        protocol=protocol.name,
        ranks=ranks,
        metrics=metrics,
        seconds=seconds,
        options={"exclude_history": exclude_history, "ties": "pessimistic", "max_length": max_length},
    )


def _mask_history(scores: torch.Tensor, examples: RankingExamples, index: np.ndarray, targets: torch.Tensor) -> None:
    """Set the scores of every history item to -inf, except the target's own score."""
    starts, ends = examples.starts[index], examples.ends[index]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(index)), lengths)
    positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    columns = examples.items[positions].astype(np.int64)
    target_scores = scores.gather(1, targets[:, None])
    device = scores.device
    scores[torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)] = float("-inf")
    scores.scatter_(1, targets[:, None], target_scores)
