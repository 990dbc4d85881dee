#!/usr/bin/env python
"""Benchmark of BlossomRec attention backends against dense causal attention (docs PERFORMANCE.md).

Workload: ONE attention layer (``BlossomRecAttention``: projections, RoPE, compressor, gate, attention,
output projection) with d=128, H=8, G=2 (d_h=16), forward + backward, B = 262144 // L rows, right-padded
histories with real lengths uniform in [L/2, L], for L in {50, 200, 512, 1024, 2048, 4096, 8192}.

Rows (all in one process, one GPU):
  * blossom / triton bf16      the fused Triton backend
  * blossom / sdpa bf16        the project's gathered-key SDPA backend
  * blossom / eager bf16       the dense-mask reference (O(L^2) memory; skipped when it cannot fit)
  * full / sdpa bf16           dense causal SDPA with GQA (FlashAttention)
  * full / flex bf16           dense causal FlexAttention with GQA (torch.compile, once per L)
  * full / sdpa fp32           dense causal SDPA in fp32 with GQA (math kernel: O(L^2))

Per row: median milliseconds of >= 10 timed steps (CUDA events) after warm-up, and peak allocated MiB
above the inputs (``max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before the step). Failures (out of memory, compile errors) are recorded, not fatal.

Then the attention operator alone (fwd+bwd of the attention function on the layer's q/k/v: triton vs
FlashAttention vs FlexAttention), and a whole-model training step (2 layers, CE loss at every position over
a 3707-item catalogue, AdamW, bf16 autocast like the project's trainer) for blossom/triton and
full/{sdpa, flex}.

Writes ``benchmark.json`` and ``benchmark.png`` (log-log time and memory against L) into ``--out-dir``
and prints the tables. Example: ``python scripts/benchmark.py --out-dir docs/bench``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blossom_hf  # noqa: E402
from blossom_hf import BlossomRecConfig, BlossomRecModel, register_attention_backend  # noqa: E402
from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern, query_is_real  # noqa: E402
from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention  # noqa: E402
from blossom_hf.models.blossomrec.modeling_blossomrec import (  # noqa: E402
    BlossomRecAttention,
    BlossomRecRotaryEmbedding,
)

TOKENS = 262144
LENGTHS = (50, 200, 512, 1024, 2048, 4096, 8192)
DEVICE = "cuda"


# --------------------------------------------------------------------------------------------------
# dense causal FlexAttention as a registered backend (attention_type="full" only)
# --------------------------------------------------------------------------------------------------
_FLEX = {}


def _flex_fn():
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _causal_block_mask(seq_len: int, device):
    key = ("mask", seq_len, str(device))
    if key not in _FLEX:
        from torch.nn.attention.flex_attention import create_block_mask

        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        _FLEX[key] = create_block_mask(causal, None, None, seq_len, seq_len, device=device)
    return _FLEX[key]


def flex_dense_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Dense causal FlexAttention with GQA (compacted histories: causal == causal over real keys)."""
    if module.config.attention_type != "full":
        raise NotImplementedError("flex_dense is a dense causal baseline (attention_type='full')")
    seq_len = query.shape[2]
    out = _flex_fn()(query, key, value, block_mask=_causal_block_mask(seq_len, query.device), scale=scaling,
                     enable_gqa=True)
    real = query_is_real(kwargs["lengths"], seq_len)[:, None, :, None]
    return torch.where(real, out, 0.0).transpose(1, 2).contiguous(), None


# every (L, batch) pair is a new shape for torch.compile: keep dynamo from falling back to the unfused
# (L x L) FlexAttention after its default 8 recompiles
torch._dynamo.config.recompile_limit = 256
torch._dynamo.config.accumulated_recompile_limit = 4096

register_attention_backend("flex_dense", flex_dense_forward, overwrite=True,
                           description="dense causal FlexAttention with GQA (benchmark baseline)")


# --------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------
def _cleanup():
    gc.collect()
    torch.cuda.empty_cache()


def measure(step, warmup: int, steps: int, clear=None) -> dict:
    """Median ms of ``steps`` timed calls after ``warmup`` calls, and peak MiB above what was allocated
    before the step (``clear`` drops the previous step's gradients first, so they count in the peak)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    torch.cuda.synchronize()
    if clear is not None:
        clear()
    _cleanup()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times),
            "peak_mib": peak / 2**20, "steps": steps}


def _lengths(batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=gen)


def _config(seq_len: int, attention_type: str, backend: str, **extra) -> BlossomRecConfig:
    return BlossomRecConfig(max_history_length=seq_len, attention_type=attention_type,
                            attn_implementation=backend, hidden_dropout_prob=0.0, **extra)


def layer_case(seq_len: int, attention_type: str, backend: str, dtype: torch.dtype, warmup: int, steps: int):
    batch = TOKENS // seq_len
    gen = torch.Generator().manual_seed(seq_len)
    config = _config(seq_len, attention_type, backend)
    torch.manual_seed(0)
    layer = BlossomRecAttention(config, 0)
    for module in layer.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    layer = layer.to(DEVICE, dtype)
    lengths = _lengths(batch, seq_len, gen).to(DEVICE)
    mask = torch.arange(seq_len, device=DEVICE)[None, :] < lengths[:, None]
    x = (torch.randn(batch, seq_len, config.hidden_size, generator=gen) * mask.cpu()[..., None]).to(DEVICE, dtype)
    x.requires_grad_()
    grad = torch.randn(batch, seq_len, config.hidden_size, generator=gen).to(DEVICE, dtype)
    rotary = BlossomRecRotaryEmbedding(config).to(DEVICE)(seq_len, DEVICE)

    def clear():
        layer.zero_grad(set_to_none=True)
        x.grad = None

    def step():
        clear()
        out = layer(x, rotary, mask, lengths)
        out.backward(grad)

    try:
        return measure(step, warmup, steps, clear)
    finally:
        _cleanup()


def op_case(seq_len: int, which: str, warmup: int, steps: int):
    """The attention operator alone (fwd+bwd), bf16, on random q/k/v of the layer's shapes."""
    batch, heads, groups, head_dim = TOKENS // seq_len, 8, 2, 16
    gen = torch.Generator(device=DEVICE).manual_seed(seq_len)
    pattern = BlossomPattern()
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=gen, device=DEVICE)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.bfloat16).requires_grad_()

    q, k, v = rnd(batch, heads, seq_len, head_dim), rnd(batch, groups, seq_len, head_dim), rnd(
        batch, groups, seq_len, head_dim)
    ck = rnd(batch, groups, seq_len // 16, head_dim)
    gate = torch.rand(batch, heads, seq_len, 2, generator=gen, device=DEVICE).requires_grad_()
    grad = torch.randn(batch, heads, seq_len, head_dim, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    scale = head_dim**-0.5
    if which == "triton":
        def fn():
            return triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=scale, pattern=pattern)
    elif which == "flash":
        def fn():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                    enable_gqa=True)
    else:
        mask = _causal_block_mask(seq_len, DEVICE)

        def fn():
            return _flex_fn()(q, k, v, block_mask=mask, scale=scale, enable_gqa=True)

    def clear():
        for t in (q, k, v, ck, gate):
            t.grad = None

    def step():
        clear()
        fn().backward(grad)

    try:
        return measure(step, warmup, steps, clear)
    finally:
        _cleanup()


def model_case(seq_len: int, attention_type: str, backend: str, warmup: int, steps: int):
    """Whole-model training step: 2 layers, CE at every position, AdamW, bf16 autocast, fp32 weights."""
    batch = TOKENS // seq_len
    gen = torch.Generator().manual_seed(seq_len + 1)
    config = BlossomRecConfig(vocab_size=3707, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)
    torch.manual_seed(0)
    model = BlossomRecModel(config).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lengths = _lengths(batch, seq_len, gen)
    real = torch.arange(seq_len)[None, :] < lengths[:, None]
    ids = torch.where(real, torch.randint(1, config.vocab_size, (batch, seq_len), generator=gen), 0).to(DEVICE)
    labels = torch.where(real, torch.randint(1, config.vocab_size, (batch, seq_len), generator=gen), 0).to(DEVICE)

    def clear():
        optimizer.zero_grad(set_to_none=True)

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    try:
        return measure(step, warmup, steps, clear)
    finally:
        _cleanup()


def _run(label: str, fn, *args) -> dict:
    t0 = time.time()
    try:
        result = fn(*args)
        result["status"] = "ok"
    except torch.OutOfMemoryError:
        result = {"status": "OOM"}
    except Exception as err:  # compile failures etc. are results, not crashes
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        result = {"status": "failed", "error": msg}
        traceback.print_exc(limit=2)
    _cleanup()
    result["wall_s"] = round(time.time() - t0, 1)
    status = (f"{result['ms']:9.2f} ms {result['peak_mib']:10.0f} MiB" if result["status"] == "ok"
              else result["status"] + (" " + result.get("error", "") if result["status"] == "failed" else ""))
    print(f"  {label:34s} {status}   ({result['wall_s']} s)", flush=True)
    return result


LAYER_ROWS = [
    # key, attention_type, backend, dtype
    ("blossom/triton bf16", "blossom", "triton", torch.bfloat16),
    ("blossom/sdpa bf16", "blossom", "sdpa", torch.bfloat16),
    ("blossom/eager bf16", "blossom", "eager", torch.bfloat16),
    ("full/sdpa bf16 (flash)", "full", "sdpa", torch.bfloat16),
    ("full/flex bf16", "full", "flex_dense", torch.bfloat16),
    ("full/sdpa fp32", "full", "sdpa", torch.float32),
]
MODEL_ROWS = [
    ("blossom/triton", "blossom", "triton"),
    ("full/sdpa (flash)", "full", "sdpa"),
    ("full/flex", "full", "flex_dense"),
]


def _eager_fits(seq_len: int) -> bool:
    batch = TOKENS // seq_len
    estimate = 10 * batch * 8 * seq_len * seq_len * 4  # ~10 live [B, H, L, L] fp32 tensors in fwd+bwd
    free, _ = torch.cuda.mem_get_info()
    return estimate < 0.85 * free


def environment() -> dict:
    import transformers

    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "blossom_hf": getattr(blossom_hf, "__version__", "?"), "command": " ".join(sys.argv),
           "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    props = torch.cuda.get_device_properties(0)
    env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    env["sms"] = props.multi_processor_count
    return env


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for key, per_len in results["layer"].items():
        xs = [int(L) for L, r in per_len.items() if r["status"] == "ok"]
        style = "o-" if key.startswith("blossom/triton") else ("s--" if key.startswith("full") else "^:")
        axes[0].plot(xs, [per_len[str(L)]["ms"] for L in xs], style, label=key)
        axes[1].plot(xs, [per_len[str(L)]["peak_mib"] for L in xs], style, label=key)
    for key, per_len in results.get("model", {}).items():
        xs = [int(L) for L, r in per_len.items() if r["status"] == "ok"]
        axes[2].plot(xs, [per_len[str(L)]["ms"] for L in xs], "o-" if "triton" in key else "s--", label=key)
    titles = ("one layer fwd+bwd: median ms", "one layer fwd+bwd: peak MiB above inputs",
              "whole model training step: median ms")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("history length L (B = 262144 // L)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"BlossomRec attention, {results['env']['gpu']}, torch {results['env']['torch']}, "
                 f"triton {results['env']['triton']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def profile_triton(seq_len: int, path: Path) -> None:
    """Per-kernel CUDA time of one layer step with the triton backend (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    batch = TOKENS // seq_len
    gen = torch.Generator().manual_seed(seq_len)
    config = _config(seq_len, "blossom", "triton")
    layer = BlossomRecAttention(config, 0).to(DEVICE, torch.bfloat16)
    lengths = _lengths(batch, seq_len, gen).to(DEVICE)
    mask = torch.arange(seq_len, device=DEVICE)[None, :] < lengths[:, None]
    x = torch.randn(batch, seq_len, 128, generator=gen).to(DEVICE, torch.bfloat16).requires_grad_()
    rotary = BlossomRecRotaryEmbedding(config).to(DEVICE)(seq_len, DEVICE)
    for _ in range(2):
        layer(x, rotary, mask, lengths).sum().backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            layer(x, rotary, mask, lengths).sum().backward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    with open(path, "a") as fh:
        fh.write(f"\n=== triton layer step, L={seq_len}, B={batch} (3 steps) ===\n{table}\n")
    print(table)
    del layer, x
    _cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--model-lengths", type=int, nargs="*", default=[200, 1024, 2048, 4096, 8192])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", nargs="*", default=None, help="subset of layer rows (by key prefix)")
    parser.add_argument("--no-ops", action="store_true", help="skip the attention-operator-only table")
    parser.add_argument("--profile", type=int, nargs="*", default=[], help="profile the triton layer at these L")
    parser.add_argument("--warps-sweep", type=int, nargs="*", default=[],
                        help="also time the triton operator alone with these num_warps values")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmark.py needs a CUDA GPU")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"env": environment(), "tokens_per_batch": TOKENS, "layer": {}, "ops": {}, "model": {}}
    print(json.dumps(results["env"]), flush=True)
    rows = [r for r in LAYER_ROWS if args.rows is None or any(r[0].startswith(p) for p in args.rows)]

    def save():
        (args.out_dir / "benchmark.json").write_text(json.dumps(results, indent=1))

    for seq_len in args.lengths:
        print(f"L={seq_len} B={TOKENS // seq_len}", flush=True)
        for key, attention_type, backend, dtype in rows:
            if backend == "eager" and not _eager_fits(seq_len):
                res = {"status": "skipped", "error": "dense L x L masks estimated larger than free memory"}
                print(f"  {key:34s} skipped (O(L^2) memory)")
            else:
                res = _run(key, layer_case, seq_len, attention_type, backend, dtype, args.warmup, args.steps)
            results["layer"].setdefault(key, {})[str(seq_len)] = res
            save()
        if not args.no_ops:
            for which in ("triton", "flash", "flex"):
                res = _run(f"op only: {which}", op_case, seq_len, which, args.warmup, args.steps)
                results["ops"].setdefault(which, {})[str(seq_len)] = res
            save()
    if args.warps_sweep:
        from blossom_hf.models.blossomrec import attention_triton

        default = attention_triton.NUM_WARPS
        for seq_len in args.lengths:
            for warps in args.warps_sweep:
                attention_triton.NUM_WARPS = warps
                res = _run(f"op only: triton num_warps={warps} L={seq_len}", op_case, seq_len, "triton",
                           args.warmup, args.steps)
                results.setdefault("warps_sweep", {}).setdefault(str(warps), {})[str(seq_len)] = res
            save()
        attention_triton.NUM_WARPS = default
    for seq_len in args.model_lengths:
        print(f"whole model, L={seq_len} B={TOKENS // seq_len}", flush=True)
        for key, attention_type, backend in MODEL_ROWS:
            res = _run(f"model {key}", model_case, seq_len, attention_type, backend, args.warmup, args.steps)
            results["model"].setdefault(key, {})[str(seq_len)] = res
            save()
    for seq_len in args.profile:
        try:
            profile_triton(seq_len, args.out_dir / "profile.txt")
        except Exception:
            traceback.print_exc()
    save()
    try:
        plot(results, args.out_dir / "benchmark.png")
    except Exception:
        traceback.print_exc()
    print_tables(results)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    return f"{r['ms']:.2f} / {r['peak_mib']:,.0f}"


def print_tables(results: dict) -> None:
    lengths = sorted({int(L) for per in results["layer"].values() for L in per})
    keys = list(results["layer"])
    print("\none layer fwd+bwd, ms / peak MiB above inputs (median of timed steps)")
    print("| L (B) | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for L in lengths:
        print(f"| {L} ({TOKENS // L}) | " + " | ".join(_cell(results["layer"][k].get(str(L))) for k in keys) + " |")
    if results["ops"]:
        print("\nattention operator only (fwd+bwd), ms / peak MiB")
        ops = list(results["ops"])
        print("| L | " + " | ".join(ops) + " |")
        for L in lengths:
            print(f"| {L} | " + " | ".join(_cell(results["ops"][k].get(str(L))) for k in ops) + " |")
    if results["model"]:
        mls = sorted({int(L) for per in results["model"].values() for L in per})
        mk = list(results["model"])
        print("\nwhole model training step (2 layers, CE over 3707 items at every position, AdamW, bf16 autocast)")
        print("| L (B) | " + " | ".join(mk) + " |")
        for L in mls:
            print(f"| {L} ({TOKENS // L}) | " + " | ".join(_cell(results["model"][k].get(str(L))) for k in mk) + " |")
    # targets
    print("\ntargets (PERFORMANCE.md):")
    tri = results["layer"].get("blossom/triton bf16", {})
    for L in lengths:
        r = tri.get(str(L))
        dense = [results["layer"].get(k, {}).get(str(L)) for k in ("full/sdpa bf16 (flash)", "full/flex bf16")]
        dense_ok = [d for d in dense if d and d["status"] == "ok"]
        if not r or r["status"] != "ok" or not dense_ok:
            continue
        fastest = min(d["ms"] for d in dense_ok)
        best_mem = min(d["peak_mib"] for d in dense_ok)
        bound = 2.0 * fastest if L <= 512 else (fastest if L >= 2048 else math.inf)
        print(f"  L={L}: time {r['ms']:.2f} ms vs fastest dense {fastest:.2f} ms (bound {bound:.2f}): "
              f"{'ok' if r['ms'] <= bound else 'MISS'}; memory {r['peak_mib']:.0f} MiB vs 1.5 x {best_mem:.0f}: "
              f"{'ok' if r['peak_mib'] <= 1.5 * best_mem else 'MISS'}")


if __name__ == "__main__":
    main()
