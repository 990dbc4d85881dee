#!/usr/bin/env python
"""ATen ops per serving-path forward (``model(ids, output_last_hidden_state=False)``), by region, on the CPU: the
host-side work a forward issues, which on a GPU is launch-bound. The sdpa backend runs its PyTorch layouts (the CPU
kernel off) with the GPU's settings (causal query chunks of ``DENSE_QUERY_CHUNK_ROWS["cuda"]`` rows, the selection's
stable sort); regions as in ``blossom_hf.benchmarks.cpu_breakdown``. Counts top-level ops (those not called by another
ATen op), views apart. On a GPU the RoPE, compressor windows and gate are Triton launches instead of the PyTorch ops
counted here under "attention layers" and "compressor".

Run: ``python scripts/dev/op_count.py --length 200 --attention-type blossom`` (and ``full`` for the dense model).
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

import blossom_hf.models.blossomrec.attention_patterns as attention_patterns
import blossom_hf.models.blossomrec.attention_sdpa as attention_sdpa
import blossom_hf.models.blossomrec.cpu_kernel as cpu_kernel
import blossom_hf.models.blossomrec.sdpa_inference as sdpa_inference
from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.benchmarks.cpu_breakdown import labelled_regions

VIEWS = {"aten::slice", "aten::unsqueeze", "aten::reshape", "aten::view", "aten::alias", "aten::transpose",
         "aten::expand", "aten::permute", "aten::select", "aten::t", "aten::as_strided", "aten::squeeze",
         "aten::unflatten", "aten::_unsafe_view", "aten::detach", "aten::lift_fresh", "aten::to", "aten::is_nonzero",
         "aten::item", "aten::unfold", "aten::contiguous", "aten::flatten"}


def region(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if not parent.name.startswith("aten::"):
            return parent.name
        parent = parent.cpu_parent
    return "(outside every region)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--attention-type", choices=["blossom", "full"], default="blossom")
    args = parser.parse_args()
    cpu_kernel.CPU_KERNEL = False
    attention_sdpa.DENSE_MAX_LENGTH["cpu"] = attention_sdpa.DENSE_MAX_LENGTH["cuda"]
    sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cpu"] = sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"]
    attention_patterns._max_rounds = lambda ranked, k: False  # the stable sort, as on a GPU
    config = BlossomRecConfig(vocab_size=3707, max_history_length=args.length, attention_type=args.attention_type,
                              attn_implementation="sdpa")
    model = BlossomRecModel(config).eval()
    ids = torch.randint(1, config.vocab_size, (args.batch, args.length))
    with torch.inference_mode(), labelled_regions():
        model(input_ids=ids, output_last_hidden_state=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=ids, output_last_hidden_state=False)
    top = [e for e in prof.events()
           if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))]
    ops = collections.Counter(region(e) for e in top if e.name not in VIEWS)
    views = collections.Counter(region(e) for e in top if e.name in VIEWS)
    print(f"L={args.length} B={args.batch} {args.attention_type}: {sum(ops.values())} ops, "
          f"{sum(views.values())} views per forward")
    for name, count in ops.most_common():
        print(f"  {count:4d} ops {views.get(name, 0):4d} views  {name}")


if __name__ == "__main__":
    main()
