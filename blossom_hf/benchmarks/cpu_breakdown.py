"""Where a CPU ``recommend()``/``forward`` call spends its time: torch.profiler totals per component.

``python -m blossom_hf.benchmarks.cpu_breakdown --threads 1 50:1:recommend 200:64:forward ...`` builds the
paper-size BlossomRec model and the dense baseline (random weights, ML-1M catalogue, ``max_history_length = L``),
wraps the components in ``torch.profiler.record_function`` regions for the duration of the run (the compressor,
the LTIS selection, masks and index tables, gathers, the small batched matmuls of the gathered layout, SDPA calls,
the FFN, the attention layers, the model forward) and prints one JSON line per (L, B, mode, model) with the
inclusive CPU milliseconds of each region per call (profiler overhead included; regions nest, so they do not sum
to the total). Used for docs/BENCHMARKS_CPU.md; nothing here is asserted by a test.
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
    ("blossom_hf.models.blossomrec.attention_sdpa", "ltis_dense_mask", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "stis_key_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "ltis_block_index", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "_table", "masks and index tables"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "_ltis_keys", "gathers"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "_stis_keys", "gathers"),
    ("blossom_hf.models.blossomrec.attention_sdpa", "_attend_small", "small matmuls + softmax"),
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

    from blossom_hf.models.blossomrec import attention_sdpa

    restore = []
    for module_name, attribute, label in REGIONS:
        owner = importlib.import_module(module_name)
        *classes, name = attribute.split(".")
        for cls in classes:
            owner = getattr(owner, cls)
        if not hasattr(owner, name):
            continue
        original = getattr(owner, name)
        setattr(owner, name, _labelled(original, label))
        restore.append((owner, name, original))
    functional = attention_sdpa.F

    class _Functional:
        def __getattr__(self, name):
            return getattr(functional, name)

        scaled_dot_product_attention = staticmethod(_labelled(functional.scaled_dot_product_attention,
                                                              "sdpa calls"))

    attention_sdpa.F = _Functional()
    try:
        yield
    finally:
        attention_sdpa.F = functional
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blossom_hf.benchmarks.cpu_breakdown", description=HELP)
    parser.add_argument("cells", nargs="+", help="L:B:mode, mode = recommend or forward (e.g. 200:64:recommend)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
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
