"""In-process A/B of the Triton kernels against a baseline checkout's (one GPU).

The baseline is a copy of an older ``blossom_hf/models/blossomrec`` folder importable as the package
``kernel_base`` (``--base DIR``: DIR holds ``kernel_base/``; make it with
``mkdir -p DIR/kernel_base && git archive REV blossom_hf/models/blossomrec | tar -x --strip-components=3 -C
DIR/kernel_base && : > DIR/kernel_base/__init__.py``). Its attention function is registered here as the backend
``triton_base``, so the baseline and this checkout run the same layer, RoPE and compressor code and differ only in the
attention kernels. Rows at one L are interleaved (``--rounds`` rounds over every row; the median of the per-round
medians):

* ``op``: the attention operator alone, fwd+bwd, bf16 (``triton.testing.do_bench`` median per round), and the CUDA
  time per kernel (torch.profiler, 5 steps) of each tree;
* ``layer``: one layer fwd+bwd, bf16 (``blossom_hf.benchmarks.gpu.layer_step``), with full/sdpa beside it;
* ``model``: the whole-model training step (``model_case``'s step), with full/sdpa beside it.

Records: one JSON object per line in ``--out``.

    python scripts/dev/kernel_ab.py --base DIR --out OUT/kernel_ab.jsonl [--sections op layer model]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

logger = logging.getLogger("kernel_ab")


def _emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    logger.info(line)
    with open(out, "a") as fh:
        fh.write(line + "\n")


def register_base(base_dir: Path) -> object:
    """Import the baseline kernels as ``kernel_base`` and register its attention as the backend ``triton_base``."""
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.registry import register_attention_backend

    sys.path.insert(0, str(base_dir))
    base = importlib.import_module("kernel_base.attention_triton")
    for name, module in list(sys.modules.items()):  # the layer passes this checkout's pattern objects
        if name.startswith("kernel_base.") and hasattr(module, "BlossomPattern"):
            module.BlossomPattern = BlossomPattern
    register_attention_backend("triton_base", base.triton_attention_forward, query_subset=True, overwrite=True,
                               description="the baseline checkout's Triton kernels (scripts/dev/kernel_ab.py)")
    return base


def _op_steps(seq_len: int, base) -> dict:
    from triton_tuning import _op_inputs  # this folder (scripts/dev) is on sys.path

    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention

    (q, k, v, ck, gate, lengths), grad, pattern = _op_inputs(seq_len)

    def make(fn):
        def step():
            for t in (q, k, v, ck, gate):
                t.grad = None
            fn(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern).backward(grad)
        return step

    def flash(q, k, v, ck, gate, lengths, scaling, pattern):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                enable_gqa=True)

    return {"new": make(triton_blossom_attention), "base": make(base.triton_blossom_attention),
            "flash": make(flash)}


def _kernel_times(step, reps: int = 5) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]
    return {"gpu_ms": round(sum(e.self_device_time_total for e in kernels) / 1000 / reps, 4),
            "top": [[e.key[:60], round(e.self_device_time_total / 1000 / reps, 4)] for e in top]}


def op_section(out: Path, lengths, rounds: int, base) -> None:
    import triton

    for seq_len in lengths:
        steps = _op_steps(seq_len, base)
        times: dict = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(triton.testing.do_bench(step, warmup=10, rep=60, return_mode="median"))
        for name, step in steps.items():
            _emit(out, {"section": "op", "L": seq_len, "row": name, "ms": round(statistics.median(times[name]), 4),
                        "rounds": [round(t, 4) for t in times[name]], **_kernel_times(step)})
        del steps
        torch.cuda.empty_cache()


def _interleaved(out: Path, section: str, seq_len: int, steps: dict, rounds: int, warmup: int, count: int) -> None:
    from blossom_hf.benchmarks.gpu import measure

    times: dict = {name: [] for name in steps}
    peaks: dict = {}
    for _ in range(rounds):
        for name, (step, clear) in steps.items():
            res = measure(step, warmup, count, clear)
            times[name].append(res["ms"])
            peaks[name] = res["peak_mib"]
    for name in steps:
        _emit(out, {"section": section, "L": seq_len, "row": name, "ms": round(statistics.median(times[name]), 3),
                    "rounds": [round(t, 3) for t in times[name]], "peak_mib": round(peaks[name], 1)})


def layer_section(out: Path, lengths, rounds: int) -> None:
    from blossom_hf.benchmarks.gpu import layer_step

    rows = (("blossom", "triton"), ("blossom", "triton_base"), ("full", "sdpa"))
    for seq_len in lengths:
        steps = {f"{a}/{b}": layer_step(seq_len, a, b, torch.bfloat16) for a, b in rows}
        _interleaved(out, "layer", seq_len, steps, rounds, 2, 8)
        del steps
        torch.cuda.empty_cache()


def model_section(out: Path, lengths, rounds: int) -> None:
    from blossom_hf.benchmarks.gpu import model_step

    rows = (("blossom", "triton"), ("blossom", "triton_base"), ("full", "sdpa"))
    for seq_len in lengths:
        steps = {f"{a}/{b}": model_step(seq_len, a, b) for a, b in rows}
        _interleaved(out, "model", seq_len, steps, rounds, 2, 6)
        del steps
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="folder holding the baseline package kernel_base/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", nargs="*", default=["op", "layer", "model"], choices=["op", "layer", "model"])
    parser.add_argument("--lengths", type=int, nargs="*", default=[200, 512, 1024, 1536])
    parser.add_argument("--model-lengths", type=int, nargs="*", default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    base = register_base(args.base)
    if "op" in args.sections:
        op_section(args.out, args.lengths, args.rounds, base)
    if "layer" in args.sections:
        layer_section(args.out, args.lengths, args.rounds)
    if "model" in args.sections:
        model_section(args.out, args.model_lengths, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
