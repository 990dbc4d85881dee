#!/usr/bin/env python
"""GPU inference (serving path) of blossom/sdpa with each inference layout against blossom/triton, side by side.

For L in --lengths and fp32 / bf16 autocast: the sdpa backend forced to its dense layout (once per
``DENSE_QUERY_CHUNK_ROWS["cuda"]`` in --chunk-rows: causal query chunks of that many rows, 0 = one call), forced to
its sparse layouts (blocked for every position, gathered for the serving query), and triton; the rows of one L in this
one process (``blossom_hf.benchmarks.gpu.inference_case``). Sets ``DENSE_MAX_LENGTH["cuda"]`` and
``DENSE_QUERY_CHUNK_ROWS["cuda"]`` from numbers.

Run: ``python scripts/dev/sdpa_layouts_vs_triton.py --out OUT/sdpa_layouts_vs_triton.json`` (CUDA).
"""

from __future__ import annotations

import argparse
import json

import torch

import blossom_hf.models.blossomrec.attention_sdpa as sdpa
import blossom_hf.models.blossomrec.sdpa_inference as sdpa_inference
from blossom_hf.benchmarks.gpu import inference_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 512, 1024])
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"]])
    parser.add_argument("--no-sparse", action="store_true", help="leave out the sparse rows")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    default = sdpa.DENSE_MAX_LENGTH["cuda"]
    default_rows = sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"]
    variants = [(f"sdpa dense rows={r}", "sdpa", 10**9, r) for r in args.chunk_rows]
    if not args.no_sparse:
        variants.append(("sdpa sparse", "sdpa", 0, default_rows))
    variants.append(("triton", "triton", default, default_rows))
    rows = []
    for length in args.lengths:
        for autocast in (False, True):
            for name, backend, limit, chunk_rows in variants:
                sdpa.DENSE_MAX_LENGTH["cuda"] = limit
                sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"] = chunk_rows
                row = inference_case(length, "blossom", backend, autocast, 3, 10)
                row.update(L=length, variant=name, autocast_bf16=autocast, chunk_rows=chunk_rows)
                rows.append(row)
                print(f"L={length:5d} {'bf16' if autocast else 'fp32'} {name:12s} {row['ms']:8.2f} ms "
                      f"{row['peak_mib']:8.0f} MiB", flush=True)  # fmt: skip
    sdpa.DENSE_MAX_LENGTH["cuda"] = default
    sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"] = default_rows
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "default_threshold": default,
            "default_chunk_rows": default_rows}
    with open(args.out, "w") as stream:
        json.dump({**meta, "rows": rows}, stream, indent=1)


if __name__ == "__main__":
    main()
