"""GPU speed of BlossomRec's attention backends against dense causal attention (docs/BENCHMARKS.md).

Workload (docs/PERFORMANCE.md): ONE attention layer (``BlossomRecAttention``: projections, RoPE, compressor,
gate, attention, output projection), d=128, H=8, G=2 (d_h=16), forward + backward, B = 262144 // L rows,
right-padded histories with real lengths uniform in [L/2, L], for L in {50, 200, 512, 1024, 2048, 4096, 8192}.

Tables (the rows compared at one L are always measured in the same process):

* ``layer``: one layer fwd+bwd. Rows ``blossom/triton bf16`` (the fused backend), ``blossom/sdpa bf16``,
  ``blossom/eager bf16`` (dense-mask reference, skipped where it cannot fit), ``full/sdpa bf16 (flash)``
  (dense causal SDPA with GQA: FlashAttention), ``full/flex bf16`` (dense causal FlexAttention with GQA,
  compiled once per shape), ``full/sdpa fp32`` (SDPA with GQA in fp32 takes the O(L^2) math kernel).
* ``ops``: the attention operator alone (fwd+bwd on the layer's q/k/v): triton vs FlashAttention vs Flex.
* ``model``: whole-model training step (2 layers, CE over a 3707-item catalogue at every real position,
  AdamW, fp32 weights with bf16 autocast as ``blossom_hf.training`` does).
* ``inference``: whole-model forward only on the serving path (``model(ids, output_last_hidden_state=False)``,
  what ``recommend()`` runs: the last layer at the last real position only; scores of every item there),
  B = 262144 // L // 4, in bf16 autocast and in fp32; the ``cuda-graph`` rows replay the same forward captured
  once (:class:`blossom_hf.cuda_graphs.CUDAGraphScorer`).

Per row: median ms of the timed steps (CUDA events) after warm-up, and peak allocated MiB above the inputs. With
``--rounds N`` (N > 1) the layer, model and inference rows of one L are prepared together and timed in N interleaved
rounds (:func:`measure_interleaved`), so that a drift of the lent machine's host or GPU speed during the run reaches
every row of a comparison alike (the host-bound rows moved by up to 2x between one-after-the-other runs); the
FlexAttention model rows, compiled per shape, and the operator rows stay one after the other.
Failures (out of memory, compile errors) are recorded, not fatal. Writes ``benchmark.json``,
``benchmark.md`` (the tables) and ``benchmark.png`` into ``--out-dir``.

Run: ``python -m blossom_hf.benchmarks.gpu --out-dir bench`` (or ``blossom-hf benchmark gpu ...``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from .flex_baseline import causal_block_mask, flex_dense_forward, flex_function, register_flex_baseline  # noqa: F401
from .gpu_report import DENSE_LAYER, DENSE_MODEL, TOKENS, markdown, plot, targets  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

HELP = "GPU speed of the attention backends (layer, operator, whole model, inference) against dense attention"
LENGTHS = (50, 200, 512, 1024, 2048, 4096, 8192)
MODEL_LENGTHS = (200, 1024, 2048, 4096, 8192)
INFERENCE_LENGTHS = (200, 1024, 4096)
CATALOGUE = 3707  # ML-1M items
DEVICE = "cuda"

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
INFERENCE_ROWS = [
    # key, attention_type, backend, autocast bf16, replayed as a CUDA graph (blossom_hf.cuda_graphs)
    ("blossom/triton bf16-autocast", "blossom", "triton", True, False),
    ("full/sdpa bf16-autocast (flash)", "full", "sdpa", True, False),
    ("blossom/triton fp32", "blossom", "triton", False, False),
    ("full/sdpa fp32 (math kernel, GQA)", "full", "sdpa", False, False),
    ("blossom/triton bf16-autocast cuda-graph", "blossom", "triton", True, True),
    ("full/sdpa bf16-autocast (flash) cuda-graph", "full", "sdpa", True, True),
    ("blossom/triton fp32 cuda-graph", "blossom", "triton", False, True),
    ("full/sdpa fp32 (math kernel, GQA) cuda-graph", "full", "sdpa", False, True),
    ("blossom/sdpa bf16-autocast", "blossom", "sdpa", True, False),
    ("blossom/sdpa fp32", "blossom", "sdpa", False, False),
]


def _cleanup() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def step_times(step: Callable[[], object], steps: int) -> list[float]:
    """Milliseconds of ``steps`` calls of ``step``, each timed by CUDA events from an idle stream."""
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def measure(step: Callable[[], object], warmup: int, steps: int, clear: Callable[[], None] | None = None) -> dict:
    """Median ms of ``steps`` timed calls after ``warmup`` calls, and peak MiB above what was allocated
    before the step (``clear`` drops the previous step's gradients first, so they count in the peak)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = step_times(step, steps)
    torch.cuda.synchronize()
    return _summary(times, step, clear)


def _summary(times: list[float], step: Callable[[], object], clear: Callable[[], None] | None) -> dict:
    """Median / min / max of ``times`` and the peak MiB of one more ``step`` above what is allocated before it."""
    if clear is not None:
        clear()
    _cleanup()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times),
            "peak_mib": peak / 2**20, "steps": len(times)}


def _lengths(batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=gen)


def layer_case(seq_len: int, attention_type: str, backend: str, dtype: torch.dtype, warmup: int, steps: int):
    step, clear = layer_step(seq_len, attention_type, backend, dtype)
    return measure(step, warmup, steps, clear)


def layer_step(seq_len: int, attention_type: str, backend: str, dtype: torch.dtype):
    """One layer's fwd+bwd step on the benchmark's inputs: ``(step, clear)`` (``clear`` drops the gradients)."""
    from blossom_hf import BlossomRecConfig
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.modeling_blossomrec import BlossomRecAttention, BlossomRecRotaryEmbedding

    batch = TOKENS // seq_len
    gen = torch.Generator().manual_seed(seq_len)
    config = BlossomRecConfig(max_history_length=seq_len, attention_type=attention_type, attn_implementation=backend,
                              hidden_dropout_prob=0.0)
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
    pattern = BlossomPattern.from_config(config)

    def clear():
        layer.zero_grad(set_to_none=True)
        x.grad = None

    def step():
        clear()
        layer(x, rotary, mask, lengths, pattern).backward(grad)

    return step, clear


def op_case(seq_len: int, which: str, warmup: int, steps: int):
    """The attention operator alone (fwd+bwd), bf16, on random q/k/v of the layer's shapes."""
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention

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
        block_mask = causal_block_mask(seq_len, DEVICE)

        def fn():
            return flex_function()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)

    def clear():
        for t in (q, k, v, ck, gate):
            t.grad = None

    def step():
        clear()
        fn().backward(grad)

    return measure(step, warmup, steps, clear)


def _model_inputs(config, batch: int, seq_len: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    lengths = _lengths(batch, seq_len, gen)
    real = torch.arange(seq_len)[None, :] < lengths[:, None]
    ids = torch.where(real, torch.randint(1, config.vocab_size, (batch, seq_len), generator=gen), 0).to(DEVICE)
    labels = torch.where(real, torch.randint(1, config.vocab_size, (batch, seq_len), generator=gen), 0).to(DEVICE)
    return ids, labels


def model_case(seq_len: int, attention_type: str, backend: str, warmup: int, steps: int):
    """Whole-model training step: 2 layers, CE at every position, AdamW, bf16 autocast, fp32 weights."""
    step, clear = model_step(seq_len, attention_type, backend)
    return measure(step, warmup, steps, clear)


def model_step(seq_len: int, attention_type: str, backend: str):
    """:func:`model_case`'s training step on the benchmark's inputs: ``(step, clear)``."""
    from blossom_hf import BlossomRecConfig, BlossomRecModel

    batch = TOKENS // seq_len
    config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)
    torch.manual_seed(0)
    model = BlossomRecModel(config).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels = _model_inputs(config, batch, seq_len, seq_len + 1)

    def clear():
        optimizer.zero_grad(set_to_none=True)

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step, clear


def inference_case(seq_len: int, attention_type: str, backend: str, autocast: bool, warmup: int, steps: int,
                   graph: bool = False):
    """Whole-model forward only on the serving path (``output_last_hidden_state=False``, what ``recommend()``
    runs: the last layer computes the last real position only; scores of every item there),
    B = 262144 // L // 4. ``graph``: the same forward captured once and replayed
    (:class:`blossom_hf.cuda_graphs.CUDAGraphScorer`; the input checks run before every replay)."""
    step, _, extra = inference_step(seq_len, attention_type, backend, autocast, graph)
    return _with_extra(measure(step, warmup, steps), extra)


def _with_extra(result: dict, extra: dict) -> dict:
    """A CUDA graph allocates its working memory once, at capture: report its pool (the per-call peak is ~0)."""
    if "graph_pool_mib" in extra:
        return {**result, "peak_mib": max(result["peak_mib"], extra["graph_pool_mib"]), **extra}
    return result


def inference_step(seq_len: int, attention_type: str, backend: str, autocast: bool, graph: bool = False):
    """:func:`inference_case`'s forward: ``(step, None, extra)`` (``extra``: the graph's memory pool)."""
    from blossom_hf import BlossomRecConfig, BlossomRecModel

    batch = max(1, TOKENS // seq_len // 4)
    config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)
    torch.manual_seed(0)
    model = BlossomRecModel(config).to(DEVICE).eval()
    ids, _ = _model_inputs(config, batch, seq_len, seq_len + 2)
    if graph:
        from blossom_hf.cuda_graphs import CUDAGraphScorer

        _cleanup()
        before = torch.cuda.memory_reserved()
        scorer = CUDAGraphScorer(model, batch, seq_len, torch.bfloat16 if autocast else None)
        _cleanup()  # what stays reserved now is the graph's private memory pool
        held = (torch.cuda.memory_reserved() - before) / 2**20
        return (lambda: scorer(ids, copy=False)), None, {"graph_pool_mib": held}

    @torch.inference_mode()
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=ids, output_last_hidden_state=False).logits

    return step, None, {}


def _failure(err: BaseException, label: str) -> dict:
    if isinstance(err, torch.OutOfMemoryError):
        return {"status": "OOM"}
    msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    logger.warning("%s failed:\n%s", label, "".join(traceback.format_exception(err, limit=3)))
    return {"status": "failed", "error": msg}


def measure_interleaved(cases: dict[str, Callable[[], tuple]], warmup: int, steps: int, rounds: int) -> dict:
    """The rows of one L side by side: every case is prepared first (``factory() -> (step, clear, extra)``), warmed
    up, then timed in ``rounds`` rounds that each run every case's share of the ``steps`` timed calls in turn, so
    a drift of the machine's speed (host clocks, GPU clocks) over the minutes of a run reaches every row alike; then
    each case's peak memory as in :func:`measure` (the other cases' tensors count as already allocated). Returns
    ``{label: result}`` like :func:`_run`'s (a case that fails is recorded and leaves the rounds)."""
    prepared, results, times = {}, {}, {}
    started = {label: time.time() for label in cases}
    for label, factory in cases.items():
        try:
            prepared[label] = factory()
            step = prepared[label][0]
            for _ in range(warmup):
                step()
            torch.cuda.synchronize()
            times[label] = []
        except Exception as err:  # an OOM or a compile failure is a result
            prepared.pop(label, None)
            results[label] = _failure(err, label)
            _cleanup()
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    for count in per_round:
        for label in list(times):
            try:
                times[label] += step_times(prepared[label][0], count)
            except Exception as err:
                results[label] = _failure(err, label)
                del times[label], prepared[label]
                _cleanup()
    for label, values in times.items():
        step, clear, extra = prepared[label]
        result = {**_summary(values, step, clear), "rounds": rounds}
        results[label] = {**_with_extra(result, extra), "status": "ok"}
    prepared.clear()
    _cleanup()
    for label in cases:
        result = results[label]
        result["wall_s"] = round(time.time() - started[label], 1)
        logger.info("  %-40s %s   (%d interleaved rounds)", label, _status(result), rounds)
    return {label: results[label] for label in cases}


def _status(result: dict) -> str:
    """A result as its log line shows it: time and memory, or the status (and error)."""
    if result["status"] == "ok":
        return f"{result['ms']:9.2f} ms {result['peak_mib']:10.0f} MiB"
    return result["status"] + (" " + result.get("error", "") if result["status"] == "failed" else "")


def _run(label: str, fn, *args) -> dict:
    t0 = time.time()
    try:
        result = fn(*args)
        result["status"] = "ok"
    except Exception as err:  # out of memory, compile failures etc. are results, not crashes
        result = _failure(err, label)
    _cleanup()
    result["wall_s"] = round(time.time() - t0, 1)
    logger.info("  %-40s %s   (%s s)", label, _status(result), result["wall_s"])
    return result


def _eager_fits(seq_len: int) -> bool:
    batch = TOKENS // seq_len
    estimate = 10 * batch * 8 * seq_len * seq_len * 4  # ~10 live [B, H, L, L] fp32 tensors in fwd+bwd
    free, _ = torch.cuda.mem_get_info()
    return estimate < 0.85 * free


def environment(argv: list[str]) -> dict:
    import transformers

    import blossom_hf

    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "blossom_hf": getattr(blossom_hf, "__version__", "?"),
           "command": "python -m blossom_hf.benchmarks.gpu " + " ".join(argv),
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


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def profile_triton(seq_len: int, path: Path) -> None:
    """Per-kernel CUDA time of three layer steps with the triton backend (torch.profiler), appended to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    from blossom_hf import BlossomRecConfig
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.modeling_blossomrec import BlossomRecAttention, BlossomRecRotaryEmbedding

    batch = TOKENS // seq_len
    gen = torch.Generator().manual_seed(seq_len)
    config = BlossomRecConfig(max_history_length=seq_len, attn_implementation="triton", hidden_dropout_prob=0.0)
    layer = BlossomRecAttention(config, 0).to(DEVICE, torch.bfloat16)
    lengths = _lengths(batch, seq_len, gen).to(DEVICE)
    mask = torch.arange(seq_len, device=DEVICE)[None, :] < lengths[:, None]
    x = torch.randn(batch, seq_len, config.hidden_size, generator=gen).to(DEVICE, torch.bfloat16).requires_grad_()
    rotary = BlossomRecRotaryEmbedding(config).to(DEVICE)(seq_len, DEVICE)
    pattern = BlossomPattern.from_config(config)
    for _ in range(2):
        layer(x, rotary, mask, lengths, pattern).sum().backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            layer(x, rotary, mask, lengths, pattern).sum().backward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    with open(path, "a") as fh:
        fh.write(f"\n=== triton layer step, L={seq_len}, B={batch} (3 steps) ===\n{table}\n")
    del layer, x
    _cleanup()


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blossom-hf benchmark gpu", description=HELP)
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS), help="L of the layer/op tables")
    parser.add_argument("--model-lengths", type=int, nargs="*", default=list(MODEL_LENGTHS))
    parser.add_argument("--inference-lengths", type=int, nargs="*", default=list(INFERENCE_LENGTHS))
    parser.add_argument("--rows", nargs="*", default=None, help="subset of layer rows (by key prefix)")
    parser.add_argument("--model-rows", nargs="*", default=None, help="subset of model rows (by key prefix)")
    parser.add_argument("--no-ops", action="store_true", help="skip the attention-operator-only table")
    parser.add_argument("--profile", type=int, nargs="*", default=[], help="profile the triton layer at these L")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="> 1: the layer, model and inference rows of one L prepared together and timed in this "
                             "many interleaved rounds (measure_interleaved); 1: one row after the other")
    parser.add_argument("--time-budget", type=float, default=math.inf,
                        help="seconds; once spent, the remaining rows are listed as not run")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise RuntimeError("blossom-hf benchmark gpu needs a CUDA GPU (none is visible)")
    register_flex_baseline()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"env": environment(argv), "tokens_per_batch": TOKENS, "layer": {}, "ops": {}, "model": {},
               "inference": {}, "skipped": []}
    logger.info(json.dumps(results["env"]))
    started = time.time()

    def save():
        tmp = args.out_dir / "benchmark.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out_dir / "benchmark.json")

    def over_budget(label: str) -> bool:
        if time.time() - started > args.time_budget:
            results["skipped"].append(label)
            return True
        return False

    interleave = args.rounds > 1

    def side_by_side(table: str, seq_len: int, cases: dict) -> None:
        """``cases``: ``{key: (label, factory)}``, measured together in interleaved rounds."""
        if over_budget(f"{table} L={seq_len} ({len(cases)} rows)"):
            return
        measured = measure_interleaved({label: factory for label, factory in cases.values()}, args.warmup,
                                       args.steps, args.rounds)
        for key, (label, _) in cases.items():
            results[table].setdefault(key, {})[str(seq_len)] = measured[label]
        save()

    layer_rows = [r for r in LAYER_ROWS if args.rows is None or any(r[0].startswith(p) for p in args.rows)]
    for seq_len in args.lengths:
        logger.info("L=%d B=%d", seq_len, TOKENS // seq_len)
        cases = {}
        for key, attention_type, backend, dtype in layer_rows:
            if backend == "eager" and not _eager_fits(seq_len):
                results["layer"].setdefault(key, {})[str(seq_len)] = {
                    "status": "skipped", "error": "dense L x L masks estimated larger than free memory"}
                continue
            if interleave:
                cases[key] = (key, lambda a=attention_type, b=backend, d=dtype, L=seq_len: (*layer_step(L, a, b, d),
                                                                                             {}))
                continue
            if over_budget(f"layer {key} L={seq_len}"):
                continue
            res = _run(key, layer_case, seq_len, attention_type, backend, dtype, args.warmup, args.steps)
            results["layer"].setdefault(key, {})[str(seq_len)] = res
            save()
        if cases:
            side_by_side("layer", seq_len, cases)
    model_rows = [r for r in MODEL_ROWS if args.model_rows is None or any(r[0].startswith(p) for p in args.model_rows)]
    # order (a time budget cuts from the end): layer rows, model rows without compilation, inference rows,
    # operator-only rows, FlexAttention model rows (one torch.compile per shape)
    compiled = [r for r in model_rows if r[2] == "flex_dense"]
    for group in ([r for r in model_rows if r not in compiled], "inference", "ops", compiled):
        if group == "ops":
            for seq_len in [] if args.no_ops else args.lengths:
                for which in ("triton", "flash", "flex"):
                    if over_budget(f"op {which} L={seq_len}"):
                        continue
                    res = _run(f"op only L={seq_len}: {which}", op_case, seq_len, which, args.warmup, args.steps)
                    results["ops"].setdefault(which, {})[str(seq_len)] = res
                    save()
            continue
        if group == "inference":
            for seq_len in args.inference_lengths:
                if interleave:
                    side_by_side("inference", seq_len, {
                        key: (f"inference L={seq_len} {key}",
                              lambda a=attention_type, b=backend, c=autocast, g=graph, L=seq_len: inference_step(
                                  L, a, b, c, g))
                        for key, attention_type, backend, autocast, graph in INFERENCE_ROWS})
                    continue
                for key, attention_type, backend, autocast, graph in INFERENCE_ROWS:
                    if over_budget(f"inference {key} L={seq_len}"):
                        continue
                    res = _run(f"inference L={seq_len} {key}", inference_case, seq_len, attention_type, backend,
                               autocast, args.warmup, args.steps, graph)
                    results["inference"].setdefault(key, {})[str(seq_len)] = res
                    save()
            continue
        for seq_len in args.model_lengths:
            if interleave and group is not compiled and group:
                side_by_side("model", seq_len, {
                    key: (f"model L={seq_len} {key}",
                          lambda a=attention_type, b=backend, L=seq_len: (*model_step(L, a, b), {}))
                    for key, attention_type, backend in group})
                continue
            for key, attention_type, backend in group:
                if over_budget(f"model {key} L={seq_len}"):
                    continue
                res = _run(f"model L={seq_len} {key}", model_case, seq_len, attention_type, backend, args.warmup,
                           args.steps)
                results["model"].setdefault(key, {})[str(seq_len)] = res
                save()
    for seq_len in args.profile:
        if over_budget(f"profile L={seq_len}"):
            continue
        try:
            profile_triton(seq_len, args.out_dir / "profile.txt")
        except Exception:
            logger.warning("profile at L=%d failed:\n%s", seq_len, traceback.format_exc(limit=3))
    save()
    try:
        plot(results, args.out_dir / "benchmark.png")
    except Exception:
        logger.warning("plot failed:\n%s", traceback.format_exc(limit=3))
    text = markdown(results)
    (args.out_dir / "benchmark.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
