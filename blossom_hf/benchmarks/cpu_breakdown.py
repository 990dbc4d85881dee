"""Where a CPU ``recommend()``/``forward`` call spends its time: torch.profiler totals per component.

``python -m blossom_hf.benchmarks.cpu_breakdown --threads 1 50:1:recommend 200:64:forward ...`` builds the
paper-size BlossomRec model and the dense baseline (random weights, ML-1M catalogue, ``max_history_length = L``),
wraps the components in ``torch.profiler.record_function`` regions for the duration of the run (the compressor,
the sdpa inference layouts (dense, blocked, gathered), the LTIS selection, masks and index tables, gathers, the
small batched matmuls of the gathered layout, SDPA calls, the FFN, the attention layers, the model forward) and
prints one JSON line per (L, B, mode, model) with the inclusive CPU milliseconds of each region per call (profiler
overhead included; regions nest, so they do not sum to the total). ``--macs L ...`` prints the multiply-add table
instead (:func:`mac_counts`); ``--layout-ab L:B ... --variant NAME=SPEC ...`` times the sdpa blocked layout alone for
versions of ``sdpa_blocked.py`` or settings of its tables, interleaved in one process (:func:`layout_ab`). Used for
docs/BENCHMARKS_CPU.md; nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HELP = "per-component CPU time of recommend()/forward (torch.profiler regions), BlossomRec vs the dense model"

#: (module path, attribute, region label); methods are given as "Class.method"
REGIONS = (
    ("blossom_hf.models.blossomrec.layers_blossomrec", "BlossomRecBlockCompressor.forward", "compressor"),
    ("blossom_hf.models.blossomrec.layers_blossomrec", "BlossomRecFeedForward.forward", "ffn"),
    ("blossom_hf.models.blossomrec.layers_blossomrec", "BlossomRecAttention.forward", "attention layers"),
    ("blossom_hf.models.blossomrec.modeling_blossomrec", "BlossomRecModel.forward", "model forward"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "ltis_select", "selection (scores + top-n)"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "ltis_select", "selection (scores + top-n)"),
    ("blossom_hf.models.blossomrec.sdpa_blocked", "ltis_select", "selection (scores + top-n)"),
    ("blossom_hf.models.blossomrec.sdpa_blocked", "_selection_rounds", "selection (scores + top-n)"),
    ("blossom_hf.models.blossomrec.sdpa_blocked", "_ltis_copied", "blocked LTIS (own + selected blocks)"),
    ("blossom_hf.models.blossomrec.sdpa_blocked", "_stis_stacked", "blocked STIS"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "_dense_selection", "selection (scores + top-n)"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "padded_queries", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "stis_key_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "stis_key_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "ltis_block_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "ltis_block_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "_table", "masks and index tables"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "_ltis_keys", "gathers"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "_stis_keys", "gathers"),
    ("blossom_hf.models.blossomrec.sdpa_inference", "_attend_small", "small matmuls + softmax"),
    # the compiled CPU kernel (cpu_kernel.py; ctypes calls, invisible to the profiler otherwise) and its layer ops
    ("blossom_hf.models.blossomrec.attention_sdpa", "cpu_kernel_attention", "cpu kernel"),
    ("blossom_hf.models.blossomrec.cpu_kernel", "rotary", "cpu kernel: rope"),
    ("blossom_hf.models.blossomrec.cpu_kernel", "compressor_windows", "cpu kernel: compressor windows"),
    # the layouts as attention_sdpa (which picks one per call) sees them
    ("blossom_hf.models.blossomrec.attention_sdpa", "dense_inference", "dense layout"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "blocked_inference", "blocked layout"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "gathered_inference", "gathered layout"),
)


def _labelled(fn, label):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def labelled_regions():
    """Wrap the components of :data:`REGIONS` (and ``F.scaled_dot_product_attention`` as the sdpa backend calls
    it) in profiler regions; restores everything on exit."""
    import importlib

    from blossom_hf.models.blossomrec import attention_sdpa, sdpa_blocked, sdpa_inference

    restore = []
    for module_name, attribute, label in REGIONS:
        owner = importlib.import_module(module_name)
        *classes, name = attribute.split(".")
        for cls in classes:
            owner = getattr(owner, cls)
        original = getattr(owner, name)
        setattr(owner, name, _labelled(original, label))
        restore.append((owner, name, original))
    functional = attention_sdpa.F
    sdpa_modules = (attention_sdpa, sdpa_inference, sdpa_blocked)

    class _Functional:
        def __getattr__(self, name):
            return getattr(functional, name)

        scaled_dot_product_attention = staticmethod(_labelled(functional.scaled_dot_product_attention,
                                                              "sdpa calls"))

    for module in sdpa_modules:
        module.F = _Functional()
    try:
        yield
    finally:
        for module in sdpa_modules:
            module.F = functional
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)


def breakdown(length: int, batch: int, mode: str, attention_type: str, vocab_size: int = 3707) -> dict:
    """Inclusive CPU ms per call of every region, for one (L, B, mode, attention type)."""
    from blossom_hf import BlossomRecConfig, BlossomRecModel

    torch.manual_seed(0)
    model = BlossomRecModel(BlossomRecConfig(vocab_size=vocab_size, attention_type=attention_type,
                                             max_history_length=length, hidden_dropout_prob=0.0)).eval()
    ids = torch.randint(1, vocab_size, (batch, length))
    histories = ids.tolist()

    def call():
        with torch.inference_mode():
            if mode == "recommend":
                return model.recommend(histories, k=10, batch_size=batch)
            return model(input_ids=ids)

    labels = {label for _, _, label in REGIONS} | {"sdpa calls", "call"}
    with labelled_regions():
        call()
        repeats = 3 if length * batch < 20000 else 1
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                with record_function("call"):
                    call()
    return {event.key: round(event.cpu_time_total / 1000 / repeats, 2) for event in prof.key_averages()
            if event.key in labels}


MAC_COLUMNS = ("projections", "ffn", "compressor", "selection scores", "ltis", "stis", "full attention",
               "catalogue scores")


def mac_counts(length: int, attention_type: str, mode: str, config=None, vocab_size: int = 3707) -> dict[str, int]:
    """Multiply-adds of one history of ``length`` items per component (both layers), counting only the work the
    model needs: Q/K/V/O (+ gate) projections, FFN, the LTIS compressor (both MLP layers, every window and kv head,
    skipped where every eligible window is selected), the selection scores of the eligible windows, LTIS (own block
    ``t - c b + 1`` keys + ``b min(n, t // b)``), STIS (offsets ``<= t``), dense causal (``t + 1`` keys) and the
    catalogue scores of the last position. ``recommend``: the last layer computes one query (its K/V projections
    and compressor still cover every position: every window is eligible for the last query)."""
    from blossom_hf import BlossomRecConfig
    from blossom_hf.models.blossomrec.attention_patterns import stis_offsets

    c = config or BlossomRecConfig(vocab_size=vocab_size, max_history_length=length)
    d, heads, groups, ff = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    dim, b, win, n = c.head_dim, c.ltis_block_size, c.ltis_compression_window, c.ltis_num_selected_blocks
    offsets = stis_offsets(c.stis_window, length)
    every = (max(length, 1) - 1) // b <= n
    out = dict.fromkeys(MAC_COLUMNS, 0)
    out["catalogue scores"] = d * vocab_size
    for layer in range(c.num_hidden_layers):
        queries = range(length) if mode == "forward" or layer < c.num_hidden_layers - 1 else [length - 1]
        out["projections"] += length * d * 2 * groups * dim + len(queries) * (
            2 * d * heads * dim + (2 * d * heads if attention_type == "blossom" else 0))
        out["ffn"] += 2 * d * ff * len(queries)
        if attention_type == "blossom":
            if not every:
                out["compressor"] += (length // b) * groups * ((win * dim) ** 2 + win * dim * dim)
            for t in queries:
                blocks = t // b
                out["selection scores"] += 0 if every else groups * blocks * dim
                out["ltis"] += heads * 2 * dim * (t - blocks * b + 1 + b * min(n, blocks))
                out["stis"] += heads * 2 * dim * (sum(1 for o in offsets if t - o >= 0) + min(c.stis_num_sinks, t + 1))
        else:
            out["full attention"] += sum(heads * 2 * dim * (t + 1) for t in queries)
    return out


def macs_table(lengths: list[int]) -> str:
    """Markdown: k multiply-adds per history position (both layers) per component, both models, both modes."""
    lines = ["| mode | L | model | " + " | ".join(MAC_COLUMNS) + " | total | blossom / full |",
             "|" + "---|" * (len(MAC_COLUMNS) + 5)]
    for mode in ("forward", "recommend"):
        for length in lengths:
            counts = {kind: mac_counts(length, kind, mode) for kind in ("blossom", "full")}
            totals = {kind: sum(v.values()) for kind, v in counts.items()}
            for kind in ("blossom", "full"):
                cells = " | ".join(f"{counts[kind][col] / length / 1e3:.1f}" for col in MAC_COLUMNS)
                ratio = f"{totals['blossom'] / totals['full']:.2f}" if kind == "blossom" else ""
                lines.append(f"| {mode} | {length} | {kind} | {cells} | {totals[kind] / length / 1e3:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def _layout_variant(name: str, spec: str):
    """A module with ``blocked_inference`` for ``--variant NAME=SPEC``: ``file:PATH`` loads that copy of
    ``sdpa_blocked.py`` (e.g. one written by ``git show REV:blossom_hf/models/blossomrec/sdpa_blocked.py``; before the
    blocked layout had its own file, ``sdpa_inference.py``) as a sibling module of the package;
    ``dense`` times the installed dense layout instead; otherwise the installed module, with the ``"cpu"`` entries of
    its tables set from ``TABLE:VALUE,...``."""
    import importlib.util

    from blossom_hf.models.blossomrec import sdpa_blocked, sdpa_inference

    if spec == "dense":  # the dense layout instead (where DENSE_MAX_LENGTH should stop it)
        return sdpa_inference, {"layout": "dense"}
    if spec.startswith("file:"):
        module_spec = importlib.util.spec_from_file_location(f"blossom_hf.models.blossomrec._variant_{name}", spec[5:])
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module, {}
    settings = {}
    for item in filter(None, spec.split(",")):
        table, _, value = item.partition(":")
        if not isinstance(getattr(sdpa_blocked, table, None), dict) or not value.isdigit():
            raise SystemExit(f"--variant {name}={spec}: expected TABLE:VALUE with a table of sdpa_blocked "
                             f"(e.g. BLOCKED_COPY_ROWS:384), got {item!r}")
        settings[table] = int(value)
    return sdpa_blocked, settings


def layout_ab(cells: list[tuple[int, int]], variants: dict[str, str], repeats: int = 7) -> list[dict]:
    """The blocked layout alone (``blocked_inference``; ``dense_inference`` for a ``dense`` variant) on random fp32
    inputs of the paper-size attention (8 query / 2 kv heads, D = 16, b = 16, l = 32, n = 4, W = 8) for each variant,
    interleaved in this process: median and fastest ms per (L, B) and the largest difference of the real queries'
    outputs from the first variant's."""
    import statistics
    import time

    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern

    modules = {name: _layout_variant(name, spec) for name, spec in variants.items()}
    pattern = BlossomPattern()
    results = []
    for length, batch in cells:
        generator = torch.Generator().manual_seed(0)

        def rand(*shape, generator=generator):
            return torch.randn(*shape, generator=generator)

        query, key, value = rand(batch, 8, length, 16), rand(batch, 2, length, 16), rand(batch, 2, length, 16)
        compressed, gate = rand(batch, 2, length // 16, 16), torch.rand(batch, 8, length, 2, generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
        lengths[0] = length
        real = (torch.arange(length) < lengths[:, None])[:, None, :, None]
        times, outputs = {name: [] for name in modules}, {}
        with torch.inference_mode():
            for rep in range(repeats + 1):
                for name, (module, settings) in modules.items():
                    dense = settings.get("layout") == "dense"
                    layout = module.dense_inference if dense else module.blocked_inference
                    settings = {k: v for k, v in settings.items() if k != "layout"}
                    saved = {table: getattr(module, table)["cpu"] for table in settings}
                    for table, setting in settings.items():
                        getattr(module, table)["cpu"] = setting
                    start = time.perf_counter()
                    out = layout(query, key, value, compressed, gate, lengths, 0.25, pattern, None,
                                 *((None,) if dense else ()))
                    elapsed = (time.perf_counter() - start) * 1000
                    for table, setting in saved.items():
                        getattr(module, table)["cpu"] = setting
                    if rep:
                        times[name].append(elapsed)
                    else:  # warm-up; padded queries are zeroed by the caller, not by the layout
                        outputs[name] = out * real
        first = next(iter(outputs.values()))
        results.append({"length": length, "batch": batch, "load": _load(), "ms": {
            name: {"median": round(statistics.median(t), 2), "min": round(min(t), 2),
                   "max_abs_diff": float((outputs[name] - first).abs().max())} for name, t in times.items()}})
    return results


def _load() -> float | None:
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blossom_hf.benchmarks.cpu_breakdown", description=HELP)
    parser.add_argument("cells", nargs="*", help="L:B:mode, mode = recommend or forward (e.g. 200:64:recommend)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--macs", type=int, nargs="+", default=None, metavar="L",
                        help="print the multiply-add table (k per position, both layers) for these L instead")
    parser.add_argument("--layout-ab", nargs="+", default=None, metavar="L:B",
                        help="time the blocked layout alone for each --variant, interleaved (one JSON line per cell)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SPEC",
                        help="with --layout-ab: file:PATH (a copy of sdpa_blocked.py), TABLE:VALUE,... (the 'cpu' "
                             "entries of sdpa_blocked's tables) or dense (the dense layout); NAME= alone is the "
                             "installed module as is")
    parser.add_argument("--repeats", type=int, default=7, help="with --layout-ab: timed calls per variant and cell")
    args = parser.parse_args(argv)
    if args.layout_ab is not None:
        torch.set_num_threads(args.threads)
        variants = dict(item.partition("=")[::2] for item in args.variant) or {"installed": ""}
        try:
            cells = [tuple(int(x) for x in cell.split(":")) for cell in args.layout_ab]
        except ValueError:
            raise SystemExit(f"--layout-ab cells are L:B, e.g. 4096:1, got {args.layout_ab}") from None
        if any(len(cell) != 2 or min(cell) < 1 for cell in cells):
            raise SystemExit(f"--layout-ab cells are L:B with positive L and B, got {args.layout_ab}")
        for result in layout_ab(cells, variants, args.repeats):
            sys.stdout.write(json.dumps({"threads": args.threads, **result}) + "\n")
            sys.stdout.flush()
        return 0
    if args.macs is not None:
        sys.stdout.write(macs_table(args.macs))
        return 0
    if not args.cells:
        parser.error("give L:B:mode cells or --macs")
    torch.set_num_threads(args.threads)
    for cell in args.cells:
        try:
            length, batch, mode = cell.split(":")
            length, batch = int(length), int(batch)
        except ValueError:
            raise SystemExit(f"cell {cell!r}: expected L:B:mode, e.g. 200:64:recommend") from None
        if mode not in ("recommend", "forward") or length < 1 or batch < 1:
            raise SystemExit(f"cell {cell!r}: L and B must be positive, mode recommend or forward")
        for attention_type in ("blossom", "full"):
            result = breakdown(length, batch, mode, attention_type)
            line = {"threads": args.threads, "length": length, "batch": batch, "mode": mode,
                    "model": attention_type, "ms": result}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
