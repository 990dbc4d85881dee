"""CPU serving benchmark: ``recommend()`` and ``forward`` latency/throughput of BlossomRec vs the dense baseline.

``python -m blossom_hf.benchmarks.cpu`` (or ``blossom-hf benchmark cpu``). For every history length L and batch
size B it builds a BlossomRec model (``attention_type="blossom"``) and the dense baseline (``"full"``) with the
same width and random weights (ML-1M catalogue by default), and times, in one process and interleaved
(A B A B ...), so that the machine's load hits every variant alike:

* ``recommend``: ``model.recommend(histories, k=10)`` on B raw histories of L items (the serving path);
* ``forward``: ``model(input_ids)`` under ``torch.inference_mode`` (every position's hidden state).

for the backends ``sdpa`` and ``eager`` of each model, and BlossomRec's sdpa backend once more with its compiled CPU
kernel switched off (``sdpa-pytorch``: the PyTorch layouts; ``--no-pytorch-layouts`` skips it). The eager backend
materialises ``[B, H, L, L]`` scores: cells whose scores would exceed ``--eager-max-elements`` are skipped and marked
so. Medians of ``--repeats`` timed calls after one warm-up call; threads as set with ``--threads`` (default: torch's
current setting). Interleaving means every timed call follows another variant's call, whose memory traffic (the eager
variants' ``L x L`` scores above all) has evicted this model's weights from the caches; ``--warm`` times, for each
variant in turn, a call that directly follows an untimed call of the same variant (a server answering one model's
requests one after another). The 1-minute load average before and after each (mode, L, B) cell is recorded beside
it (a shared machine's other work shows there). Writes a markdown table (stdout, ``--markdown``) and JSON (``--json``,
written after every cell, so a long run that is stopped keeps its finished cells). No number here is asserted by a
test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

HELP = "CPU serving benchmark: recommend()/forward latency of BlossomRec vs the dense model (sdpa, eager)"

VARIANTS = (("blossom", "sdpa"), ("blossom", "sdpa-pytorch"), ("full", "sdpa"), ("blossom", "eager"),
            ("full", "eager"))


def _machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "load_average": load,
    }


def _kernel() -> dict:
    """The sdpa backend's CPU kernel on this machine (built for the paper-size shape: head_dim 16, b 16, g 4)."""
    from blossom_hf.models.blossomrec import cpu_kernel

    reason = cpu_kernel.kernel_status(16, 16, 4)
    entry = cpu_kernel._LIBRARIES.get((16, 16, 4))
    return {"available": reason is None, "reason": reason, "compiler": cpu_kernel._compiler(),
            "openmp": bool(isinstance(entry, tuple) and entry[1]), "openmp_runtime": cpu_kernel._openmp_runtime()}


def _build(attention_type: str, length: int, vocab_size: int, seed: int):
    from blossom_hf import BlossomRecConfig, BlossomRecModel

    torch.manual_seed(seed)
    config = BlossomRecConfig(vocab_size=vocab_size, attention_type=attention_type, max_history_length=length,
                              hidden_dropout_prob=0.0)
    return BlossomRecModel(config).eval()


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - cpu) * 1000.0


def run(
    lengths: list[int],
    batch_sizes: list[int],
    modes: list[str],
    repeats: int = 5,
    vocab_size: int = 3707,
    eager_max_elements: int = 1 << 28,
    seed: int = 0,
    pytorch_layouts: bool = True,
    warm: bool = False,
    progress: bool = True,
    on_cell: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Time every (mode, L, B, model, backend) cell; returns one record per cell (``median_ms`` None = skipped).
    ``on_cell(records so far)`` is called after each (L, B) cell."""
    from blossom_hf.models.blossomrec import cpu_kernel

    kernel_setting = cpu_kernel.CPU_KERNEL
    records: list[dict] = []
    cells = [(length, batch) for length in lengths for batch in batch_sizes]
    generator = torch.Generator().manual_seed(seed)
    for length, batch in tqdm(cells, desc="cpu benchmark", disable=not progress):
        models = {kind: _build(kind, length, vocab_size, seed) for kind in ("blossom", "full")}
        heads = models["blossom"].config.num_attention_heads
        ids = torch.randint(1, vocab_size, (batch, length), generator=generator)
        histories = ids.tolist()
        for mode in modes:
            load_before = _load()
            calls: dict[tuple[str, str], Callable[[], object]] = {}
            skipped: dict[tuple[str, str], str] = {}
            for kind, backend in VARIANTS:
                if backend == "sdpa-pytorch" and not pytorch_layouts:
                    continue
                if backend == "eager" and batch * heads * length * length > eager_max_elements:
                    skipped[(kind, backend)] = f"eager [B, H, L, L] scores > {eager_max_elements} elements"
                    continue
                model = models[kind]

                def call(model=model, backend=backend, mode=mode, histories=histories, ids=ids, batch=batch):
                    model.set_attn_implementation(backend.split("-")[0])
                    cpu_kernel.CPU_KERNEL = backend != "sdpa-pytorch"
                    with torch.inference_mode():
                        if mode == "recommend":
                            return model.recommend(histories, k=10, batch_size=max(batch, 1))
                        return model(input_ids=ids)

                calls[(kind, backend)] = call
            times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in calls}
            for key, call in calls.items():  # warm-up (and a first estimate of the cost)
                times[key].append(_time(call))
            slowest = max((t[0][0] for t in times.values()), default=0.0)
            reps = repeats if slowest < 4000 else max(2, min(repeats, 3))
            for key in times:
                times[key].clear()
            for _ in range(reps):
                for key, call in calls.items():
                    if warm:
                        call()  # untimed: the timed call then finds this variant's weights in the caches
                    times[key].append(_time(call))
            cpu_kernel.CPU_KERNEL = kernel_setting
            load_after = _load()
            for kind, backend in VARIANTS:
                key = (kind, backend)
                if key not in times and key not in skipped:
                    continue
                record = {"mode": mode, "length": length, "batch": batch, "model": kind, "backend": backend,
                          "warm": warm, "load_before": load_before, "load_after": load_after}
                if key in times:
                    wall = [t[0] for t in times[key]]
                    median = statistics.median(wall)
                    record.update(median_ms=round(median, 3), min_ms=round(min(wall), 3), repeats=len(wall),
                                  cpu_median_ms=round(statistics.median(t[1] for t in times[key]), 3),
                                  histories_per_s=round(batch / (median / 1000.0), 2))
                else:
                    record.update(median_ms=None, skipped=skipped[key])
                records.append(record)
                logger.info("%s", record)
        if on_cell is not None:
            on_cell(records)
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per (mode, L, B): median ms of each variant and blossom/full ratios per backend."""
    rows: dict = {}
    for r in records:
        rows.setdefault((r["mode"], r["length"], r["batch"]), {})[(r["model"], r["backend"])] = r
    header = ("| mode | L | B | blossom sdpa ms (min) | full sdpa ms (min) | blossom/full sdpa, median (min) | "
              "blossom sdpa, PyTorch layouts ms (min) | its blossom/full, median (min) | "
              "blossom eager ms (min) | full eager ms (min) | blossom/full eager, median (min) | "
              "blossom sdpa histories/s | load avg (1 min) before/after |")
    lines = [header, "|" + "---|" * 13]

    def fmt(r):
        return "skipped" if r is None or r.get("median_ms") is None else f"{r['median_ms']:.2f} ({r['min_ms']:.2f})"

    def ratio(a, b):
        if a is None or b is None or a.get("median_ms") is None or b.get("median_ms") is None:
            return "-"
        return f"{a['median_ms'] / b['median_ms']:.2f} ({a['min_ms'] / b['min_ms']:.2f})"

    for (mode, length, batch), cell in rows.items():
        bs, fs, bp = cell.get(("blossom", "sdpa")), cell.get(("full", "sdpa")), cell.get(("blossom", "sdpa-pytorch"))
        be, fe = cell.get(("blossom", "eager")), cell.get(("full", "eager"))
        throughput = "-" if bs is None or bs.get("median_ms") is None else f"{bs['histories_per_s']:.1f}"
        any_record = next(iter(cell.values()))
        load = f"{any_record.get('load_before')} / {any_record.get('load_after')}"
        lines.append(f"| {mode} | {length} | {batch} | {fmt(bs)} | {fmt(fs)} | {ratio(bs, fs)} | {fmt(bp)} | "
                     f"{ratio(bp, fs)} | {fmt(be)} | "
                     f"{fmt(fe)} | {ratio(be, fe)} | {throughput} | {load} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blossom-hf benchmark cpu", description=HELP)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1024, 2048, 4096])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--modes", nargs="+", choices=("recommend", "forward"), default=["recommend", "forward"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as set)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median reported)")
    parser.add_argument("--vocab-size", type=int, default=3707, help="items + 1 (default: the ML-1M catalogue)")
    parser.add_argument("--eager-max-elements", type=int, default=1 << 28,
                        help="skip the eager backend where B*H*L*L exceeds this (its L x L scores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the records and the machine here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument("--no-pytorch-layouts", action="store_true",
                        help="skip the run of BlossomRec's sdpa backend with its CPU kernel switched off")
    parser.add_argument("--warm", action="store_true",
                        help="time each call right after an untimed call of the same variant (warm caches)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in ("lengths", "batch_sizes"):
        if any(v < 1 for v in getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be positive integers, got {getattr(args, name)}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    machine = _machine()
    machine["cpu_kernel"] = _kernel()
    try:
        import transformers

        machine["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    started = time.time()
    command = "python -m blossom_hf.benchmarks.cpu " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(records: list[dict]) -> str:
        table = markdown_table(records)
        if args.markdown is not None:
            args.markdown.write_text(table, encoding="utf-8")
        if args.json is not None:
            payload = {"command": command.strip(), "machine": machine, "seconds": round(time.time() - started, 1),
                       "records": records}
            tmp = args.json.with_suffix(args.json.suffix + ".tmp")
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            tmp.replace(args.json)
        return table

    records = run(args.lengths, args.batch_sizes, args.modes, repeats=args.repeats, vocab_size=args.vocab_size,
                  eager_max_elements=args.eager_max_elements, seed=args.seed,
                  pytorch_layouts=not args.no_pytorch_layouts, warm=args.warm, progress=not args.no_progress,
                  on_cell=write)
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    sys.stdout.write(write(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
