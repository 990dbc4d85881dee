#!/usr/bin/env python
"""One fwd+bwd step of the Triton attention operator (the benchmark's op inputs, bf16) between
``cudaProfilerStart/Stop``, for Nsight Compute: per-kernel occupancy, issue and stall statistics.

    ncu --profile-from-start off --kernel-name regex:"tile|select" --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python scripts/dev/ncu_op.py --length 1024 [--variant base]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from triton_tuning import VARIANTS, _geometry, _op_inputs, _op_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--strategy", default="auto", choices=["auto", "tile", "gather"])
    parser.add_argument("--variant", default="base", choices=list(VARIANTS))
    args = parser.parse_args()
    inputs, grad, pattern = _op_inputs(args.length)
    step = _op_step(inputs, grad, pattern, _geometry(args.length, args.strategy, VARIANTS[args.variant]))
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
