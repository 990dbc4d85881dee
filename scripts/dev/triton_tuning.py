"""Development measurements of the Triton backend on one GPU (docs/triton_notes.md): inference rows with and
without the serving path, a per-op CUDA profile of inference, a sweep of the dense-tile geometry
(``TritonGeometry``) and the tile/gathered crossover. Results go to ``<out>/tuning.jsonl`` (one JSON object per
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


def layer_ab(out: Path, lengths, rounds: int = 3) -> None:
    """A/B of the fused RoPE on the benchmark's layer rows, interleaved
    in one process: per L, ``rounds`` rounds over every variant, median of the per-round medians."""
    import statistics

    from blossom_hf.benchmarks.gpu import layer_step, measure
    from blossom_hf.models.blossomrec import layers_blossomrec as layers

    variants = [("blossom", "triton", True), ("blossom", "triton", False), ("full", "sdpa", True),
                ("full", "sdpa", False)]
    for seq_len in lengths:
        steps = {v: layer_step(seq_len, v[0], v[1], torch.bfloat16) for v in variants}
        times: dict = {v: [] for v in variants}
        peaks: dict = {}
        for _ in range(rounds):
            for v in variants:
                layers.FUSED_ROPE = v[2]
                res = measure(steps[v][0], 2, 8, steps[v][1])
                times[v].append(res["ms"])
                peaks[v] = res["peak_mib"]
        layers.FUSED_ROPE = True
        for v in variants:
            _emit(out, {"section": "layer-ab", "L": seq_len, "row": f"{v[0]}/{v[1]}", "fused_rope": v[2],
                        "ms": round(statistics.median(times[v]), 3), "rounds": [round(t, 3) for t in times[v]],
                        "peak_mib": round(peaks[v], 1)})
        del steps
        torch.cuda.empty_cache()


#: ``ops-ab`` variants: flags of ``layers_blossomrec`` (fused compressor windows, gate) per blossom row; a tree
#: without a flag ignores it, so the same section runs on an older checkout as the baseline process
#: (``--ab-variants fused`` there)
OPS_VARIANTS = {
    "fused": dict(FUSED_COMPRESSOR_WINDOWS=True, FUSED_GATE=True),
    "ops-off": dict(FUSED_COMPRESSOR_WINDOWS=False, FUSED_GATE=False),
    "windows-off": dict(FUSED_COMPRESSOR_WINDOWS=False, FUSED_GATE=True),
    "gate-off": dict(FUSED_COMPRESSOR_WINDOWS=True, FUSED_GATE=False),
}


def _set_flags(flags: dict) -> None:
    from blossom_hf.models.blossomrec import layers_blossomrec as layers

    for name, value in flags.items():
        if hasattr(layers, name):
            setattr(layers, name, value)


def _model_step(seq_len: int, attention_type: str, backend: str, inference: bool):
    """The benchmark's model rows (blossom_hf.benchmarks.gpu.model_case / inference_case, bf16 autocast) as a
    step function, so that variants can be interleaved in one process."""
    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.benchmarks.gpu import CATALOGUE, _model_inputs

    batch = max(1, TOKENS // seq_len // 4) if inference else TOKENS // seq_len
    config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)
    torch.manual_seed(0)
    model = BlossomRecModel(config).to("cuda")
    ids, labels = _model_inputs(config, batch, seq_len, seq_len + (2 if inference else 1))
    if inference:
        model.eval()

        @torch.inference_mode()
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(input_ids=ids, output_last_hidden_state=False).logits

        return step, None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def clear():
        optimizer.zero_grad(set_to_none=True)

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step, clear


def ops_ab(out: Path, lengths, model_lengths, inference_lengths, rounds: int = 3, tag: str = "",
           variants=("fused", "ops-off")) -> None:
    """A/B of the fused layer ops (compressor windows, gate; :data:`OPS_VARIANTS`) on the benchmark's layer, model
    and bf16-autocast inference rows, full/sdpa beside them: per case and L, ``rounds`` interleaved rounds over
    the variants, median of the per-round medians. ``tag`` names the checkout (run once per tree)."""
    import statistics

    from blossom_hf.benchmarks.gpu import layer_step, measure

    cases = [("layer", L) for L in lengths] + [("model", L) for L in model_lengths] + [
        ("inference", L) for L in inference_lengths]
    for kind, seq_len in cases:
        rows = [(f"blossom/triton {name}", "blossom", "triton", OPS_VARIANTS[name]) for name in variants]
        rows.append(("full/sdpa", "full", "sdpa", {}))
        steps = {}
        for key, attention_type, backend, _ in rows:
            if kind == "layer":
                steps[key] = layer_step(seq_len, attention_type, backend, torch.bfloat16)
            else:
                steps[key] = _model_step(seq_len, attention_type, backend, kind == "inference")
        times: dict = {r[0]: [] for r in rows}
        peaks: dict = {}
        for _ in range(rounds):
            for key, _, _, flags in rows:
                _set_flags(flags)
                res = measure(steps[key][0], 3, 10, steps[key][1])
                times[key].append(res["ms"])
                peaks[key] = res["peak_mib"]
        _set_flags(OPS_VARIANTS["fused"])
        for key, *_ in rows:
            _emit(out, {"section": "ops-ab", "tree": tag, "case": kind, "L": seq_len, "row": key,
                        "ms": round(statistics.median(times[key]), 3), "rounds": [round(t, 3) for t in times[key]],
                        "peak_mib": round(peaks[key], 1)})
        del steps
        torch.cuda.empty_cache()


def launch_overhead(out: Path, calls: int = 300) -> None:
    """Host time per call on tiny inputs (the GPU work is negligible, so the loop is host-bound): the triton
    backend's inference forward (two launches plus its Python), one RoPE launch, the fused gate and compressor
    windows against their PyTorch ops, one PyTorch add."""
    from blossom_hf.models.blossomrec.attention_patterns import ltis_window_keys
    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention
    from blossom_hf.models.blossomrec.triton_rope import launch_rope

    (q, k, v, ck, gate, lengths), _, pattern = _op_inputs(32, batch=1)
    q, k, v, ck, gate = (x.detach() for x in (q, k, v, ck, gate))
    cos = torch.rand(32, 16, device="cuda")
    logits = torch.randn(1, 32, 16, device="cuda", dtype=torch.bfloat16)
    position = torch.randn(2, 32, 16, device="cuda")
    cases = {
        "triton_blossom_attention (no grad: select + forward launches)":
            lambda: triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern),
        "launch_rope (one launch)": lambda: launch_rope(q, cos, cos),
        "torch.add (one aten op)": lambda: torch.add(q, q),
        "gate: torch sigmoid(float) view transpose":
            lambda: torch.sigmoid(logits.float()).view(1, 32, 8, 2).transpose(1, 2),
        "compressor windows: ltis_window_keys + P (PyTorch ops)":
            lambda: (ltis_window_keys(k, lengths, pattern) + position[None, :, None].to(k.dtype)).flatten(-2),
    }
    try:
        from blossom_hf.models.blossomrec.triton_layer_ops import launch_gate, launch_windows

        cases["gate: triton_layer_ops.launch_gate (one launch)"] = lambda: launch_gate(logits, 8)
        cases["compressor windows: triton_layer_ops.launch_windows (one launch)"] = lambda: launch_windows(
            k, lengths, position, pattern.block_size, pattern.compression_window)
    except ImportError:  # an older checkout (the baseline of an A/B)
        pass
    with torch.no_grad():
        for name, fn in cases.items():
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            per_call = (time.perf_counter() - t0) / calls
            _emit(out, {"section": "launch", "case": name, "us_per_call": round(per_call * 1e6, 1)})


def ce_compare(out: Path, cases=((196608, 3707), (32768, 1_000_000))) -> None:
    """Cross-entropy over the catalogue, fwd+bwd under bf16 autocast (as in training): the project's
    ``chunked_cross_entropy`` against Liger-Kernel's fused linear CE and cut-cross-entropy (exact, and with its
    default gradient filter), on ``[T, 128]`` fp32 states and a ``[V, 128]`` fp32 item table (item 0 = padding is
    excluded: the fused kernels get ``weight[1:]`` and ``targets - 1``). Time, peak memory, and the difference of
    the loss and the gradients from the chunked one."""
    from blossom_hf.benchmarks.gpu import measure
    from blossom_hf.losses import chunked_cross_entropy

    def liger(h, w, t):
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss()(w[1:], h, t - 1)

    def cce(filter_eps):
        def fn(h, w, t):
            from cut_cross_entropy import linear_cross_entropy

            return linear_cross_entropy(h.to(torch.bfloat16), w[1:].to(torch.bfloat16), t - 1, filter_eps=filter_eps)
        return fn

    def materialised(h, w, t):  # what model(input_ids, labels=...) computes (modeling_blossomrec._loss)
        scores = h @ w.t().to(h.dtype)
        scores[..., 0] = float("-inf")
        return torch.nn.functional.cross_entropy(scores.float(), t)

    variants = {"chunked (blossom_hf.losses)": chunked_cross_entropy,
                "materialised logits + F.cross_entropy (model(labels=))": materialised, "liger fused linear CE": liger,
                "cut-cross-entropy exact (filter_eps=None)": cce(None), "cut-cross-entropy default filter": cce("high")}
    for tokens, items in cases:
        _ce_case(out, tokens, items, variants, measure)
        torch.cuda.empty_cache()


def _ce_case(out: Path, tokens: int, items: int, variants: dict, measure) -> None:
    gen = torch.Generator(device="cuda").manual_seed(tokens + items)
    hidden = torch.randn(tokens, 128, generator=gen, device="cuda").requires_grad_()
    weight = (torch.randn(items, 128, generator=gen, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(1, items, (tokens,), generator=gen, device="cuda")
    reference = None

    def clear():
        hidden.grad = weight.grad = None

    for name, fn in variants.items():
        def step(fn=fn):
            clear()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(hidden, weight, targets)
            loss.backward()
            return loss

        try:
            loss = step()
            grads = (float(loss), hidden.grad.clone(), weight.grad.clone())
            if reference is None:
                reference = grads
            diff = {"loss_abs_diff": abs(grads[0] - reference[0]),
                    "grad_hidden_rel": float((grads[1] - reference[1]).norm() / reference[1].norm()),
                    "grad_weight_rel": float((grads[2] - reference[2]).norm() / reference[2].norm())}
            del grads
            res = measure(step, 2, 6, clear)
            _emit(out, {"section": "ce", "tokens": tokens, "items": items, "variant": name, "loss": float(loss),
                        **diff, **res})
        except Exception as err:  # a missing wheel or an unsupported shape: recorded, not fatal
            _emit(out, {"section": "ce", "tokens": tokens, "items": items, "variant": name,
                        "error": f"{type(err).__name__}: {err}"[:300]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--sections", nargs="*", default=["inference", "profile", "sweep", "crossover"],
                        help="also: profile-layer (per-op profile of one layer's fwd+bwd at --profile-lengths), "
                        "layer-ab (fused RoPE on and off at --profile-lengths), ops-ab (fused compressor windows / "
                        "gate on and off, layer, model and inference rows at --ab-*lengths), launch (host time per "
                        "launch), ce (chunked CE against Liger / cut-cross-entropy)")
    parser.add_argument("--profile-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-lengths", type=int, nargs="*", default=[50, 200, 512, 1024],
                        help="ops-ab: layer rows at these L")
    parser.add_argument("--ab-model-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-inference-lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--ab-variants", nargs="*", default=["fused", "ops-off"],
                        choices=list(OPS_VARIANTS))
    parser.add_argument("--ab-rounds", type=int, default=3)
    parser.add_argument("--tag", default="", help="ops-ab: the checkout's name in the records")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--inference-lengths", type=int, nargs="*", default=[200, 1024, 4096])
    parser.add_argument("--sweep-lengths", type=int, nargs="*", default=[200, 512, 1024])
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
        jobs += [(L, "tile", v) for L in args.sweep_lengths for v in args.variants]
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
        ce_compare(args.out_dir)
    if "layer-ab" in args.sections:
        layer_ab(args.out_dir, args.profile_lengths)
    if "ops-ab" in args.sections:
        ops_ab(args.out_dir, args.ab_lengths, args.ab_model_lengths, args.ab_inference_lengths, args.ab_rounds,
               args.tag, args.ab_variants)
    if "profile-layer" in args.sections:
        profile_layer(args.out_dir, args.profile_lengths)
    if "sweep" in args.sections:
        sweep(args.out_dir, args.sweep_lengths, args.variants)
    if "crossover" in args.sections:
        for strategy in ("tile", "gather"):
            sweep(args.out_dir, args.cross_lengths, ["base", "before"], strategy=strategy, tag="crossover")
    logger.info("measured in %.1f s", time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

