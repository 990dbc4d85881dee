#!/usr/bin/env python
"""A/B of the LTIS compressor alone on one GPU: ``BlossomRecBlockCompressor`` at the benchmark's shapes (B = 262144 //
L rows, G = 2, D = 16, l = 32, b = 16; key a bf16 view of a projection, fp32 parameters under bf16 autocast as the
model trains) with the PyTorch form (windows kernel + fc1/ReLU/fc2) against triton_compressor's fused kernels in
several configurations. Per variant and L: forward only (no grad, the serving path) and forward + backward, median
ms of CUDA-event timings, ``--rounds`` interleaved rounds (median of the round medians).

    python scripts/dev/compressor_ab.py --out OUT/compressor_ab.jsonl [--lengths 200 1024 4096] [--rounds 5] \
        [--batch-divisor 4 --calls 10] [--variants pytorch default few32 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from blossom_hf import BlossomRecConfig
from blossom_hf.benchmarks.gpu import TOKENS, step_times
from blossom_hf.models.blossomrec import layers_blossomrec as layers
from blossom_hf.models.blossomrec import triton_compressor as tc
from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern

_KNOBS = ("BLOCK_ROWS", "FWD_BLOCK_COLS", "FWD_BLOCK_K", "FWD_WARPS", "BWD_BLOCK_COLS",
          "BWD_BLOCK_K", "BWD_WARPS", "NUM_STAGES", "CAST_WEIGHTS", "DX_BY_GEMM")
_DEFAULTS = {name: getattr(tc, name) for name in _KNOBS}  # the module's own configuration


def _v(rows=64, cols=64, k=64, warps=4, stages=None, cast=False, gemm=False) -> dict:
    """One tile configuration for both kernels (as the round-v11 sweep measured them)."""
    return dict(BLOCK_ROWS=rows, FWD_BLOCK_COLS=cols, FWD_BLOCK_K=k, FWD_WARPS=warps,
                BWD_BLOCK_COLS=cols, BWD_BLOCK_K=k, BWD_WARPS=warps, NUM_STAGES=stages, CAST_WEIGHTS=cast,
                DX_BY_GEMM=gemm)


#: name -> triton_compressor's knobs ("pytorch": FUSED_COMPRESSOR_MLP off; "default": the module's configuration)
VARIANTS = {
    "pytorch": None,
    "default": _DEFAULTS,
    "r64-c64-k64-w4": _v(),
    "r128-c64-k64-w8": _v(rows=128, warps=8),
    "r64-c128-k64-w4": _v(cols=128),
    "r64-c128-k64-w8": _v(cols=128, warps=8),
    "r64-c256-k64-w8": _v(cols=256, warps=8),
    "r128-c128-k64-w8": _v(rows=128, cols=128, warps=8),
    "r64-c128-k128-w8": _v(cols=128, k=128, warps=8),
    "r64-c256-k32-w8": _v(cols=256, k=32, warps=8),
    "r64-c128-k64-w8-s2": _v(cols=128, warps=8, stages=2),
    "r64-c128-k64-w8-s4": _v(cols=128, warps=8, stages=4),
    "r64-c128-k64-w8-cast": _v(cols=128, warps=8, cast=True),
    "r64-c128-k64-w8-gemm": _v(cols=128, warps=8, gemm=True),
    "r64-c256-k64-w8-cast-gemm": _v(cols=256, warps=8, cast=True, gemm=True),
    # round v12: fewer windows per program where 64 leave SMs idle (the inference batch, --batch-divisor 4: 8192
    # windows at every L, 128 programs of 64 on 132 SMs). Call 2 measured them through a knob that applied the smaller
    # row count only below one program per SM; at the inference batch that is every case, so these reproduce them
    # there (at the training batch they would not). Slower at every L (docs/BENCHMARKS.md, "Kernel round v12").
    "v11-tiles": _DEFAULTS,
    "few32": {**_DEFAULTS, "BLOCK_ROWS": 32},
    "few16": {**_DEFAULTS, "BLOCK_ROWS": 16},
    "few32-c128": {**_DEFAULTS, "BLOCK_ROWS": 32, "FWD_BLOCK_COLS": 128},
    "few16-c128-w4": {**_DEFAULTS, "BLOCK_ROWS": 16, "FWD_BLOCK_COLS": 128, "FWD_WARPS": 4, "BWD_WARPS": 4},
}


def _set(variant: str) -> None:
    knobs = VARIANTS[variant]
    layers.FUSED_COMPRESSOR_MLP = layers.FUSED_COMPRESSOR_MLP_TRAINING = knobs is not None
    for name, value in (knobs or _DEFAULTS).items():
        setattr(tc, name, value)


def _measure(seq_len: int, args) -> list[dict]:
    records = []
    batch = max(1, TOKENS // seq_len // args.batch_divisor)
    config = BlossomRecConfig(max_history_length=seq_len)
    torch.manual_seed(0)
    module = layers.BlossomRecBlockCompressor(config).cuda()
    pattern = BlossomPattern.from_config(config)
    gen = torch.Generator(device="cuda").manual_seed(1)
    key = torch.randn(batch, seq_len, 2, 16, generator=gen, device="cuda").to(torch.bfloat16).transpose(1, 2)
    key.requires_grad_()
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=gen, device="cuda")
    grad = torch.randn(batch, 2, seq_len // 16, 16, generator=gen, device="cuda").to(torch.bfloat16)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return module(key, lengths, pattern)

    def train():
        module.zero_grad(set_to_none=True)
        key.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(key, lengths, pattern)
        out.backward(grad)

    def repeated(fn):
        def run():
            for _ in range(args.calls):
                fn()
        return run

    times = {(v, c): [] for v in args.variants for c in ("fwd", "fwd+bwd")}
    failed: dict = {}
    for _ in range(args.rounds):
        for variant in args.variants:
            _set(variant)
            for case, fn in (("fwd", forward), ("fwd+bwd", train)):
                if (variant, case) in failed:
                    continue
                try:
                    for _ in range(3):
                        fn()
                    torch.cuda.synchronize()
                    times[(variant, case)].append(statistics.median(step_times(repeated(fn), args.steps)) / args.calls)
                except Exception as error:  # a configuration that does not compile (resources): recorded
                    failed[(variant, case)] = f"{type(error).__name__}: {str(error)[:200]}"
                    print(f"L={seq_len} {variant} {case}: {failed[(variant, case)]}", flush=True)
    for key in failed:
        times.pop(key, None)
    _set("default")
    layers.FUSED_COMPRESSOR_MLP_TRAINING = False  # the module's default again
    for (variant, case), values in times.items():
        record = {"L": seq_len, "B": batch, "variant": variant, "case": case,
                  "ms": round(statistics.median(values), 4), "rounds": [round(v, 4) for v in values]}
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 1024, 4096])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-divisor", type=int, default=1, help="B = 262144 // L // this (4: the inference rows)")
    parser.add_argument("--calls", type=int, default=1, help="calls per timing (ms reported per call): several keep "
                        "the GPU busy where one call's launch takes longer than its kernels")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = []
    for seq_len in args.lengths:
        records += _measure(seq_len, args)
    with open(args.out, "w") as handle:
        handle.write(f'{{"device": "{torch.cuda.get_device_name()}", "torch": "{torch.__version__}"}}\n')
        for record in records:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
