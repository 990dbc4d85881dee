"""Leave-one-out split by time (RecBole ``LS: valid_and_test`` with ``order: TO``).

Per user with ``n >= 3`` interactions (oldest first):

* training history = items ``0 .. n-3``;
* validation: input = training history, target = item ``n-2``;
* test: input = training history + validation item, target = item ``n-1``.

Users with fewer than 3 interactions keep everything in training and are not evaluated; how many is
logged and recorded in :attr:`LeaveOneOutSplit.summary`.

Nothing is copied: the split is a set of index ranges over :attr:`SequenceData.items`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .preprocessing import SequenceData

logger = logging.getLogger(__name__)

MIN_EVALUATED_LENGTH = 3


@dataclass(frozen=True)
class RankingExamples:
    """Evaluation examples: history ``items[starts[i]:ends[i]]`` (oldest first) and its ``targets[i]``.

    ``users[i]`` is the user number (row of :class:`SequenceData`) of example ``i``. The input given
    to a model is the most recent ``max_history_length`` items of the history; the whole history is
    used when seen items are excluded from a ranking.
    """

    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> RankingExamples:
        """The examples at ``indices`` (e.g. this process's shard)."""
        return RankingExamples(
            items=self.items,
            starts=self.starts[indices],
            ends=self.ends[indices],
            targets=self.targets[indices],
            users=self.users[indices],
        )


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Leave-one-out split of :class:`SequenceData`.

    Attributes:
        data: the ordered histories.
        train_ends: exclusive end (index into ``data.items``) of every user's training history.
        evaluated_users: users with at least 3 interactions (the only ones in validation and test).
    """

    data: SequenceData
    train_ends: np.ndarray
    evaluated_users: np.ndarray

    @property
    def train_starts(self) -> np.ndarray:
        return self.data.offsets[:-1]

    @property
    def n_short_users(self) -> int:
        return self.data.n_users - len(self.evaluated_users)

    def validation(self) -> RankingExamples:
        """Input = training history, target = second-to-last item."""
        return self._held_out(0)

    def test(self) -> RankingExamples:
        """Input = training history + validation item, target = last item."""
        return self._held_out(1)

    def _held_out(self, after_train: int) -> RankingExamples:
        """Each evaluated user's history up to ``after_train`` items past its training part; target = the next."""
        users = self.evaluated_users
        ends = self.train_ends[users] + after_train
        return RankingExamples(
            items=self.data.items,
            starts=self.data.offsets[users],
            ends=ends,
            targets=self.data.items[ends].astype(np.int64),
            users=users,
        )

    def train_item_counts(self) -> np.ndarray:
        """How often each item index occurs in the training histories (length ``n_items + 1``)."""
        in_train = np.zeros(self.data.n_interactions, dtype=bool)
        starts = self.train_starts
        lengths = self.train_ends - starts
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        in_train[positions] = True
        return np.bincount(self.data.items[in_train], minlength=self.data.n_items + 1)

    @property
    def summary(self) -> dict[str, Any]:
        lengths = self.train_ends - self.train_starts
        return {
            "split": "leave-one-out by time (last = test, second-to-last = validation)",
            "users": self.data.n_users,
            "evaluated_users": int(len(self.evaluated_users)),
            "users_with_fewer_than_3_interactions": self.n_short_users,
            "users_with_one_interaction": int((self.data.lengths == 1).sum()),
            "training_interactions": int(lengths.sum()),
            "training_targets": int(np.maximum(lengths - 1, 0).sum()),
        }


def leave_one_out(data: SequenceData) -> LeaveOneOutSplit:
    """Split every user's history: last item = test target, second-to-last = validation target."""
    lengths = data.lengths
    evaluated = lengths >= MIN_EVALUATED_LENGTH
    train_ends = np.where(evaluated, data.offsets[1:] - 2, data.offsets[1:]).astype(np.int64)
    n_short = int((~evaluated).sum())
    if n_short:
        logger.info(
            "Leave-one-out: %d of %d users have fewer than %d interactions; all their interactions go to "
            "training and they are not evaluated (%d of them have a single interaction, which gives no "
            "training target either: skipped)",
            n_short,
            data.n_users,
            MIN_EVALUATED_LENGTH,
            int((lengths == 1).sum()),
        )
    split = LeaveOneOutSplit(data=data, train_ends=train_ends, evaluated_users=np.flatnonzero(evaluated))
    logger.info("Leave-one-out split: %s", split.summary)
    return split
