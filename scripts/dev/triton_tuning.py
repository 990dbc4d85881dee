"""Development measurements of the Triton backend on one GPU (docs/triton_notes.md): inference rows with and
without the serving path, a per-op CUDA profile of inference, a sweep of the dense-tile geometry
(``TritonGeometry``), the tile/gathered crossover and a per-op profile of one layer step; the A/B sections (fused
ops on and off, host time per launch) are in ``tuning_ab.py``. Results go to ``<out>/tuning.jsonl`` (one JSON object per
line, written as it goes) and ``<out>/profile_*.txt``.

    python scripts/dev/triton_tuning.py --out-dir OUT [--sections inference profile sweep crossover]

Kernel compilation is done first in parallel worker processes (``--jobs``; triton's on-disk cache then serves
the measuring process), so the timed part is not spent compiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import torch

logger = logging.getLogger("triton_tuning")
TOKENS = 262144
VARIANTS = {
    # relative to plan()'s geometry; "before" is the geometry of the previous release (4 warps everywhere, 32-key
    # tiles in the dq kernel)
    "base": {},
    "before": dict(warps_select=4, warps_select_bwd=4, warps_bwd_q=4, warps_bwd_kv=4, BNQ=32),
    "q_bn32": dict(BNQ=32),
    "q_w4": dict(warps_bwd_q=4),
    "kv_w4": dict(warps_bwd_kv=4),
    "bn16": dict(BN=16),
    "bm32": dict(BM=32, R=128),
    "q_bn16": dict(BNQ=16),  # 16-key tiles with plan()'s 2 warps in the dq kernel (never measured together)
    "q_bn16_w4": dict(BNQ=16, warps_bwd_q=4),  # no register spill in the dq kernel (scripts/dev/compile_check.py)
    "sel_w8": dict(warps_select=8, warps_select_bwd=8),  # no spill in the selection kernels at L >= 1024
    "selbwd_w4": dict(warps_select_bwd=4),
    "fwd_r128": dict(maxreg_fwd=128),  # 4 programs of 4 warps per SM (140 registers without the cap)
    "q_w4_r128": dict(warps_bwd_q=4, maxreg_bwd_q=128),
    "kv_w4_r128": dict(warps_bwd_kv=4, maxreg_bwd_kv=128),
    "q_bn16_w4_r128": dict(BNQ=16, warps_bwd_q=4, maxreg_bwd_q=128),
    # the selection's tiles (TQ queries x BW windows; BW is also the window tile of its backward)
    "sel_tq32": dict(TQ=32),
    "sel_tq128": dict(TQ=128),
    "sel_bw16": dict(BW=16),
    "sel_bw32": dict(BW=32),
    "selb_bw16": dict(BWB=16),
    "selb_bw32": dict(BWB=32),
    "sel_bw16_b16": dict(BW=16, BWB=16),
    "sel_bw16_b32": dict(BW=16, BWB=32),
    "sel_bw32_b16": dict(BW=32, BWB=16),
    "sel_bw32_b32": dict(BW=32, BWB=32),
    "sel_bw128": dict(BW=128),
    "sel_tq32_bw128": dict(TQ=32, BW=128),
    "sel_w4": dict(warps_select=4),
    "sel_bw16_w2": dict(BW=16, warps_select=2),
    "sel_bw64_b64": dict(BW=64, BWB=64, warps_select=4),  # v6's geometry of the selection at L >= 1024
    # register caps: more programs per SM (ncu at L = 1024: the dk/dv kernel at 240 registers runs 8 warps per SM)
    "kv_r168": dict(maxreg_bwd_kv=168),
    "kv_r192": dict(maxreg_bwd_kv=192),
    "fwd_r96": dict(maxreg_fwd=96),
    "fwd_r80": dict(maxreg_fwd=80),
    "q_r96": dict(maxreg_bwd_q=96),
    "sel_bw32_w2": dict(BW=32, warps_select=2),
    # the gathered strategy's kernels (L > TILE_MAX_SEQ_LEN) take the same fields (ncu at L = 4096: its dq kernel runs
    # 8 warps per SM at 188 registers, the forward 16 at 105, the key-side one 16 at 112)
    "g_q_r128": dict(maxreg_bwd_q=128),
    "g_q_r168": dict(maxreg_bwd_q=168),
    "g_q_w2": dict(warps_bwd_q=2),
    "g_q_w8": dict(warps_bwd_q=8),
    "g_fwd_r80": dict(maxreg_fwd=80),
    "g_fwd_r96": dict(maxreg_fwd=96),
    "g_kv_r96": dict(maxreg_bwd_kv=96),
    "g_kv_w2": dict(warps_bwd_kv=2),
    "g_q_w1": dict(warps_bwd_q=1),
    "g_kv_w1": dict(warps_bwd_kv=1),
    "g_v7": dict(warps_bwd_q=4, warps_bwd_kv=4, maxreg_fwd=0),  # the gathered kernels as before the v8 sweep
    # smaller query tiles (v9): fewer rows share a tile, so the union of their selected blocks covers fewer key
    # tiles (random selections at L = 1024: ~28 of 32 causal blocks for 16 queries, ~13 for 4)
    "bm8": dict(BM=8, R=32),
    "bm8_bn16": dict(BM=8, R=32, BN=16, BNQ=16),
    "bm8_bn16_w2": dict(BM=8, R=32, BN=16, BNQ=16, num_warps=2, warps_bwd_q=2, warps_bwd_kv=2),
    "bm4": dict(BM=4, R=16),
    "bm4_bn16": dict(BM=4, R=16, BN=16, BNQ=16),
    # (the register caps of the 64-row tiles make the 1-warp kernels spill: compile_check, 168 / 72 B of stack)
    "bm4_bn16_w1": dict(BM=4, R=16, BN=16, BNQ=16, num_warps=1, warps_bwd_q=1, warps_bwd_kv=1, maxreg_fwd=0,
                        maxreg_bwd_q=0),
    "bm4_bn16_w2": dict(BM=4, R=16, BN=16, BNQ=16, num_warps=2, warps_bwd_q=2, warps_bwd_kv=2, maxreg_bwd_q=0),
    "bm4_w2": dict(BM=4, R=16, num_warps=2, warps_bwd_q=2, warps_bwd_kv=2, maxreg_bwd_q=0),
    "bm8_w2": dict(BM=8, R=32, num_warps=2, warps_bwd_q=2, warps_bwd_kv=2),
    # the backward's own query tiles (BMB; plan() takes 4-query, one-block tiles at L >= SMALL_BWD_MIN_SEQ_LEN)
    "bwd_big": dict(BMB=16, RB=64, BNQ=32, BNK=32, warps_bwd_q=4, maxreg_bwd_q=128, warps_bwd_kv=2),
    "bwd_small": dict(BMB=4, RB=16, BNQ=16, BNK=16, warps_bwd_q=1, maxreg_bwd_q=0, warps_bwd_kv=1),
    "bwd_small_kv32": dict(BMB=4, RB=16, BNQ=16, BNK=32, warps_bwd_q=1, maxreg_bwd_q=0, warps_bwd_kv=1),
    "fwd_big": dict(BM=16, R=64, BN=32, num_warps=4, maxreg_fwd=80),  # 16-query forward over 4-query union rows
    "selq_fused": dict(SELQ_MIN_BM=1),  # the selection's dq share in the dq kernel at any query tile (v9: slower)
    "bwd_small_fwd_bm8": dict(BM=8, R=32, BN=16, num_warps=2, BMB=4, RB=16, BNQ=16, BNK=16, warps_bwd_q=1,
                              maxreg_bwd_q=0, warps_bwd_kv=1),
}


def _emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    logger.info(line)
    with open(out / "tuning.jsonl", "a") as fh:
        fh.write(line + "\n")


def _op_inputs(seq_len: int, batch: int | None = None):
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern

    batch = batch or TOKENS // seq_len
    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=gen, device="cuda")

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.bfloat16).requires_grad_()

    q, k, v = rnd(batch, 8, seq_len, 16), rnd(batch, 2, seq_len, 16), rnd(batch, 2, seq_len, 16)
    ck = rnd(batch, 2, seq_len // 16, 16)
    gate = torch.rand(batch, 8, seq_len, 2, generator=gen, device="cuda").requires_grad_()
    grad = torch.randn(batch, 8, seq_len, 16, generator=gen, device="cuda", dtype=torch.bfloat16)
    return (q, k, v, ck, gate, lengths), grad, BlossomPattern()


def _geometry(seq_len: int, strategy: str, variant: dict):
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_triton import plan

    return dataclasses.replace(plan(8, 2, seq_len, 16, BlossomPattern(), 2, strategy), **variant)


def _op_step(inputs, grad, pattern, geometry):
    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention

    q, k, v, ck, gate, lengths = inputs

    def step():
        for t in (q, k, v, ck, gate):
            t.grad = None
        triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern,
                                 geometry=geometry).backward(grad)

    return step


def _compile_job(job):
    """Worker: run one (L, strategy, variant) once at a small batch so its kernels land in triton's cache."""
    seq_len, strategy, name = job
    try:
        inputs, grad, pattern = _op_inputs(seq_len, batch=2)
        _op_step(inputs, grad, pattern, _geometry(seq_len, strategy, VARIANTS[name]))()
        torch.cuda.synchronize()
        return job, None
    except Exception as err:  # reported, measured as failed later
        return job, f"{type(err).__name__}: {err}"[:300]


def _warm_job(job):
    """Worker: one small step of a benchmark row (``blossom_hf.benchmarks.gpu`` at batch 2) so that its Triton
    kernels are in triton's on-disk cache before the benchmark process times anything."""
    kind, seq_len = job
    from blossom_hf.benchmarks import gpu

    gpu.TOKENS = 2 * seq_len * (4 if kind == "inference" else 1)  # batch 2
    try:
        if kind == "layer":
            gpu.layer_case(seq_len, "blossom", "triton", torch.bfloat16, 1, 1)
        elif kind == "model":
            gpu.model_case(seq_len, "blossom", "triton", 1, 1)
        else:
            for autocast in (True, False):
                gpu.inference_case(seq_len, "blossom", "triton", autocast, 1, 1)
        return job, None
    except Exception as err:
        return job, f"{type(err).__name__}: {err}"[:300]


def precompile(jobs, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    t0 = time.time()
    errors = {}
    with ctx.Pool(workers) as pool:
        for job, err in pool.imap_unordered(_warm_job if isinstance(jobs[0][0], str) else _compile_job, jobs):
            if err:
                errors[job] = err
    logger.info("precompiled %d jobs in %.1f s (%d errors)", len(jobs), time.time() - t0, len(errors))
    return errors


def _kernel_times(step, reps: int = 5) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        if "kernel" in e.key and ("tile" in e.key or "gather" in e.key or "select" in e.key):
            times[e.key] = round(e.device_time_total / 1000 / reps, 4)
    return times


def sweep(out: Path, lengths, names, strategy="tile", tag="sweep") -> None:
    import triton

    for seq_len in lengths:
        inputs, grad, pattern = _op_inputs(seq_len)
        for name in names:
            try:
                step = _op_step(inputs, grad, pattern, _geometry(seq_len, strategy, VARIANTS[name]))
                ms = triton.testing.do_bench(step, warmup=20, rep=150, return_mode="median")
                _emit(out, {"section": tag, "L": seq_len, "strategy": strategy, "variant": name, "ms": round(ms, 4),
                            "kernels": _kernel_times(step)})
            except Exception as err:
                _emit(out, {"section": tag, "L": seq_len, "strategy": strategy, "variant": name,
                            "error": f"{type(err).__name__}: {err}"[:300]})
        del inputs, grad
        torch.cuda.empty_cache()


def inference(out: Path, lengths) -> None:
    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.benchmarks.gpu import CATALOGUE, _model_inputs, measure
    from blossom_hf.models.blossomrec import layers_blossomrec as layers
    from blossom_hf.models.blossomrec import registry

    triton_backend = registry.get_attention_backend("triton")
    for seq_len in lengths:
        batch = max(1, TOKENS // seq_len // 4)
        for attention_type, backend in (("blossom", "triton"), ("full", "sdpa")):
            config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                                      attn_implementation=backend)
            torch.manual_seed(0)
            model = BlossomRecModel(config).to("cuda").eval()
            ids, _ = _model_inputs(config, batch, seq_len, seq_len + 2)
            modes = [("serving", dict(output_last_hidden_state=False), True),
                     ("serving-pytorch-rope", dict(output_last_hidden_state=False), True)]
            for autocast in (True, False):
                for mode, kwargs, subset in modes:
                    registry._BACKENDS["triton"] = dataclasses.replace(triton_backend, query_subset=subset)
                    layers.FUSED_ROPE = mode != "serving-pytorch-rope"

                    @torch.inference_mode()
                    def step(kwargs=kwargs, autocast=autocast, model=model, ids=ids):
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                            return model(input_ids=ids, **kwargs).logits

                    res = measure(step, 3, 15)
                    _emit(out, {"section": "inference", "L": seq_len, "B": batch,
                                "model": f"{attention_type}/{backend}", "mode": mode,
                                "dtype": "bf16-autocast" if autocast else "fp32", **res})
            registry._BACKENDS["triton"] = triton_backend
            layers.FUSED_ROPE = True
            model = None
            torch.cuda.empty_cache()


def profile_inference(out: Path, lengths) -> None:
    from torch.profiler import ProfilerActivity, profile

    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.benchmarks.gpu import CATALOGUE, _model_inputs

    for seq_len in lengths:
        batch = max(1, TOKENS // seq_len // 4)
        for attention_type, backend in (("blossom", "triton"), ("full", "sdpa")):
            config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                                      attn_implementation=backend)
            model = BlossomRecModel(config).to("cuda").eval()
            ids, _ = _model_inputs(config, batch, seq_len, seq_len + 2)

            @torch.inference_mode()
            def step(model=model, ids=ids):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return model(input_ids=ids, output_last_hidden_state=False).logits

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
            with open(out / "profile_inference.txt", "a") as fh:
                fh.write(f"\n=== inference serving path bf16-autocast {attention_type}/{backend} L={seq_len} "
                         f"B={batch} (5 steps) ===\n{table}\n")
            model = None
            torch.cuda.empty_cache()


def profile_layer(out: Path, lengths, rows=(("blossom", "triton"), ("full", "sdpa"))) -> None:
    """torch.profiler of one layer's fwd+bwd (the benchmark's layer rows): per-op CUDA time and launch count per
    step (``profile_layer.txt``) and a summary record per row (wall ms, GPU kernel ms, kernels per step)."""
    from torch.profiler import ProfilerActivity, profile

    from blossom_hf.benchmarks.gpu import layer_step, measure

    reps = 5
    for seq_len in lengths:
        for attention_type, backend in rows:
            step, clear = layer_step(seq_len, attention_type, backend, torch.bfloat16)
            wall = measure(step, 3, 10, clear)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            gpu_ms = sum(e.self_device_time_total for e in kernels) / 1000 / reps
            launches = sum(e.count for e in kernels) / reps
            top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]
            _emit(out, {"section": "profile-layer", "L": seq_len, "row": f"{attention_type}/{backend}",
                        "wall_ms": round(wall["ms"], 3), "gpu_kernel_ms": round(gpu_ms, 3),
                        "kernels_per_step": launches,
                        "top": [[e.key[:90], round(e.self_device_time_total / 1000 / reps, 4), e.count / reps]
                                for e in top]})
            table = events.table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=80)
            with open(out / "profile_layer.txt", "a") as fh:
                fh.write(f"\n=== layer fwd+bwd bf16 {attention_type}/{backend} L={seq_len} ({reps} steps) ===\n"
                         f"{table}\n")
            del step, clear, prof
            torch.cuda.empty_cache()


def main() -> int:
    from tuning_ab import OPS_VARIANTS, launch_overhead, layer_ab, ops_ab  # this folder (scripts/dev) is on sys.path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--sections", nargs="*", default=["inference", "profile", "sweep", "crossover"],
                        help="also: profile-layer (per-op profile of one layer's fwd+bwd at --profile-lengths), "
                        "layer-ab (fused RoPE on and off at --profile-lengths), ops-ab (fused compressor windows / "
                        "gate on and off, layer, model and inference rows at --ab-*lengths), launch (host time per "
                        "launch); the A/B sections are in tuning_ab.py")
    parser.add_argument("--profile-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-lengths", type=int, nargs="*", default=[50, 200, 512, 1024],
                        help="ops-ab: layer rows at these L")
    parser.add_argument("--ab-model-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-inference-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-graph-lengths", type=int, nargs="*", default=[],
                        help="ops-ab: the cuda-graph inference rows (bf16) at these L")
    parser.add_argument("--ab-variants", nargs="*", default=["fused", "ops-off"],
                        choices=list(OPS_VARIANTS))
    parser.add_argument("--ab-rounds", type=int, default=3)
    parser.add_argument("--tag", default="", help="ops-ab: the checkout's name in the records")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--inference-lengths", type=int, nargs="*", default=[200, 1024, 4096])
    parser.add_argument("--sweep-lengths", type=int, nargs="*", default=[200, 512, 1024])
    parser.add_argument("--sweep-strategy", default="tile", choices=["tile", "gather", "auto"],
                        help="sweep: the strategy of every row (auto: plan()'s choice per L)")
    parser.add_argument("--cross-lengths", type=int, nargs="*", default=[1024, 1536, 2048])
    parser.add_argument("--warm-benchmark", type=int, nargs="*", default=None, metavar="L",
                        help="only fill triton's cache for the benchmark's layer/model/inference rows at these L")
    parser.add_argument("--compile-only", action="store_true", help="only fill triton's cache (parallel workers)")
    parser.add_argument("--no-compile", action="store_true", help="skip the parallel compilation step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.warm_benchmark:
        jobs = [(kind, L) for L in args.warm_benchmark for kind in ("layer", "model", "inference")]
        for job, err in precompile(jobs, args.jobs).items():
            _emit(args.out_dir, {"section": "warm", "job": list(job), "error": err})
        return 0
    jobs = []
    if "sweep" in args.sections:
        jobs += [(L, args.sweep_strategy, v) for L in args.sweep_lengths for v in args.variants]
    if "crossover" in args.sections:
        jobs += [(L, s, v) for L in args.cross_lengths for s in ("tile", "gather") for v in ("base", "before")]
    errors = precompile(jobs, args.jobs) if jobs and not args.no_compile else {}
    for job, err in errors.items():
        _emit(args.out_dir, {"section": "compile", "job": list(job), "error": err})
    if args.compile_only:
        return 0
    t0 = time.time()
    if "inference" in args.sections:
        inference(args.out_dir, args.inference_lengths)
    if "profile" in args.sections:
        profile_inference(args.out_dir, [200])
    if "launch" in args.sections:
        launch_overhead(args.out_dir)
    if "ce" in args.sections:
        raise SystemExit("the ce section is now `python -m blossom_hf.benchmarks.fused_ce`")
    if "layer-ab" in args.sections:
        layer_ab(args.out_dir, args.profile_lengths)
    if "ops-ab" in args.sections:
        ops_ab(args.out_dir, args.ab_lengths, args.ab_model_lengths, args.ab_inference_lengths, args.ab_rounds,
               args.tag, args.ab_variants, args.ab_graph_lengths)
    if "profile-layer" in args.sections:
        profile_layer(args.out_dir, args.profile_lengths)
    if "sweep" in args.sections:
        sweep(args.out_dir, args.sweep_lengths, args.variants, strategy=args.sweep_strategy)
    if "crossover" in args.sections:
        for strategy in ("tile", "gather"):
            sweep(args.out_dir, args.cross_lengths, ["base", "before"], strategy=strategy, tag="crossover")
    logger.info("measured in %.1f s", time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

