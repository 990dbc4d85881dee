"""A brute-force, one-query-at-a-time reading of docs/MODEL.md, for tiny shapes only.

Deliberately shares no code with the package: key sets are built with Python sets and loops.
"""

from __future__ import annotations

import math

import torch


def window_keys(key: torch.Tensor, length: int, block: int, window: int) -> torch.Tensor:
    """[G, M, l, D] window keys of one row: positions w*b-(l-b) .. w*b+b-1, zero outside 0..length-1."""
    groups, seq_len, dim = key.shape
    num_windows = seq_len // block
    out = torch.zeros(groups, num_windows, window, dim, dtype=key.dtype)
    for w in range(num_windows):
        for i in range(window):
            pos = w * block - (window - block) + i
            if 0 <= pos < length:
                out[:, w, i] = key[:, pos]
    return out


def stis_keys(t: int, window: int, sinks: int) -> set[int]:
    keys = {t - d for d in range(window) if t - d >= 0}
    k = 0
    while t - 2**k >= 0:
        keys.add(t - 2**k)
        k += 1
    keys |= {s for s in range(sinks) if s <= t}
    return keys


def attention(query, key, value, compressed_key, gate, lengths, *, scaling, block, num_selected,
              window, sinks, straight_through=True):
    """Same contract as eager_blossom_attention; loops over (batch, group, query)."""
    batch, heads, seq_len, dim = query.shape
    groups = key.shape[1]
    g = heads // groups
    num_windows = seq_len // block
    rows = []
    for b in range(batch):
        length = int(lengths[b])
        per_head = [[None] * seq_len for _ in range(heads)]
        for gamma in range(groups):
            for t in range(seq_len):
                if t >= length:
                    for h in range(gamma * g, (gamma + 1) * g):
                        per_head[h][t] = torch.zeros(dim, dtype=torch.float64)
                    continue
                eligible = [w for w in range(num_windows) if w * block + block - 1 < t and w * block < length]
                heads_of_group = range(gamma * g, (gamma + 1) * g)
                zbar = {}
                for w in eligible:
                    zs = [scaling * (query[b, h, t] @ compressed_key[b, gamma, w]) for h in heads_of_group]
                    zbar[w] = sum(zs) / g
                if eligible:
                    zt = torch.stack([zbar[w] for w in eligible])
                    p = dict(zip(eligible, torch.softmax(zt, dim=0), strict=True))
                else:
                    p = {}
                ranked = sorted(eligible, key=lambda w: (float(zbar[w].detach()), w), reverse=True)
                chosen = ranked[:num_selected]
                own = list(range(t // block * block, t + 1))
                for h in heads_of_group:
                    # LTIS: one joint softmax over own block + selected blocks
                    keys, logits = [], []
                    for j in own:
                        keys.append(j)
                        logits.append(scaling * (query[b, h, t] @ key[b, gamma, j]))
                    for w in chosen:
                        s = 1 + p[w] - p[w].detach() if straight_through else 1.0
                        for j in range(w * block, w * block + block):
                            keys.append(j)
                            logits.append(scaling * (query[b, h, t] @ (key[b, gamma, j] * s)))
                    weights = torch.softmax(torch.stack(logits), dim=0)
                    o_l = sum(wt * value[b, gamma, j] for wt, j in zip(weights, keys, strict=True))
                    # STIS
                    skeys = sorted(stis_keys(t, window, sinks))
                    slog = torch.stack([scaling * (query[b, h, t] @ key[b, gamma, j]) for j in skeys])
                    sw = torch.softmax(slog, dim=0)
                    o_s = sum(wt * value[b, gamma, j] for wt, j in zip(sw, skeys, strict=True))
                    per_head[h][t] = gate[b, h, t, 0] * o_l + gate[b, h, t, 1] * o_s
        rows.append(torch.stack([torch.stack(per_head[h]) for h in range(heads)]))
    return torch.stack(rows)


def selection(query, compressed_key, lengths, *, scaling, block, num_selected):
    """[B, G, L, n] top-n windows (ties -> larger w), -1 padded."""
    batch, heads, seq_len, _ = query.shape
    groups = compressed_key.shape[1]
    g = heads // groups
    num_windows = seq_len // block
    out = torch.full((batch, groups, seq_len, num_selected), -1, dtype=torch.long)
    for b in range(batch):
        for gamma in range(groups):
            for t in range(int(lengths[b])):
                eligible = [w for w in range(num_windows) if w * block + block - 1 < t]
                z = {w: sum(float((scaling * query[b, h, t] @ compressed_key[b, gamma, w]).detach())
                            for h in range(gamma * g, (gamma + 1) * g)) / g for w in eligible}
                ranked = sorted(eligible, key=lambda w: (z[w], w), reverse=True)[:num_selected]
                out[b, gamma, t, : len(ranked)] = torch.tensor(ranked, dtype=torch.long)
    return out


def scaled(dim: int) -> float:
    return 1.0 / math.sqrt(dim)
