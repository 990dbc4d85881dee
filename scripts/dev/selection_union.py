#!/usr/bin/env python
"""How many distinct blocks the ``b`` queries of a query block select together (the union of their LTIS selections),
in the paper-size model with random weights: what a block-sparse kernel working on query tiles (FlexAttention's
block mask, a union-of-blocks tile) would visit instead of each query's own ``n`` blocks. Used for
docs/cpu_kernel.md ("Alternatives"); nothing here is asserted by a test.

Run: ``python scripts/dev/selection_union.py 1024 4096`` (one JSON line per L and layer).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.models.blossomrec import attention_sdpa, cpu_kernel
from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern, ltis_select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lengths", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    cpu_kernel.CPU_KERNEL = False  # the PyTorch blocked layout, whose inputs are captured below
    attention_sdpa.DENSE_MAX_LENGTH["cpu"] = 0
    captured = []
    original = attention_sdpa.blocked_inference

    def capture(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks):
        captured.append(ltis_select(query, compressed_key, lengths, scaling, pattern, with_probs=False)[0])
        return original(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks)

    attention_sdpa.blocked_inference = capture
    for length in args.lengths:
        torch.manual_seed(0)
        config = BlossomRecConfig(vocab_size=3707, max_history_length=length, hidden_dropout_prob=0.0)
        pattern = BlossomPattern.from_config(config)
        model = BlossomRecModel(config).eval()
        captured.clear()
        with torch.inference_mode():
            model(input_ids=torch.randint(1, config.vocab_size, (args.batch, length)))
        b, n = pattern.block_size, pattern.num_selected_blocks
        for layer, selected in enumerate(captured):  # [B, G, L, n]
            tiles = selected[:, :, : length // b * b].reshape(-1, b * n)  # the b queries of a block, all slots
            unions = [len(set(row.tolist()) - {-1}) for row in tiles]
            print(json.dumps({"length": length, "layer": layer, "blocks": length // b, "per_query": n,
                              "mean_union_per_query_block": round(statistics.mean(unions), 2),
                              "max_union": max(unions)}))


if __name__ == "__main__":
    main()
