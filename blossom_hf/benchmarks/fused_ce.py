"""The training losses over the whole catalogue, side by side on one GPU: time, peak memory, agreement.

Variants (every one the same mean cross-entropy, padding item 0 excluded):

* ``logits`` -- the model's own loss (``model(input_ids, labels=...).loss``: ``[T, V]`` logits, then
  ``F.cross_entropy``); in ``loss`` cases, the same on materialised logits;
* ``chunked`` -- :func:`blossom_hf.losses.chunked_cross_entropy` (PyTorch matmuls, item chunk by chunk);
* ``liger`` -- :mod:`blossom_hf.fused_losses` (Liger-Kernel, Triton; the training option ``--loss liger``);
* ``cce`` -- cut-cross-entropy's ``linear_cross_entropy`` (Triton, ``filter_eps=None``: no gradient filtering),
  measured here only (not a training option: see :mod:`blossom_hf.fused_losses`).

Cases: ``loss:TOKENS:ITEMS`` (the loss alone on random states, d = 128, bf16 autocast: forward + backward)
and ``model:L:ATTENTION`` (the benchmark's whole-model training step at window L, ML-1M catalogue, 262,144
tokens, AdamW, bf16 autocast; ``ATTENTION`` = ``blossom`` (triton backend) or ``full`` (sdpa)). Every variant of
a case runs in this one process on the same inputs; a variant that runs out of memory is reported as such.
Agreement: the loss, and in ``loss`` cases the largest gradient difference against ``chunked`` in fp32.

Run: ``python -m blossom_hf.benchmarks.fused_ce --out-dir OUT`` (CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

HELP = "fused linear cross-entropy (Liger-Kernel, cut-cross-entropy) against the project's losses, on a GPU"
VARIANTS = ("logits", "chunked", "liger", "cce")
CASES = ("loss:262144:3707", "loss:16384:1000000", "loss:65536:1000000", "model:200:blossom", "model:200:full",
         "model:1024:blossom", "model:1024:full")  # fmt: skip
HIDDEN = 128


def _loss_fn(variant: str):
    from ..fused_losses import fused_linear_cross_entropy
    from ..losses import chunked_cross_entropy

    if variant == "chunked":
        return chunked_cross_entropy
    if variant == "liger":
        return lambda h, w, t: fused_linear_cross_entropy(h, w, t, "liger")
    if variant == "cce":
        return _cut_cross_entropy

    def materialised(h, w, t):
        logits = (h @ w.t()).float()
        logits[:, 0] = float("-inf")
        return torch.nn.functional.cross_entropy(logits, t)

    return materialised


def _run(row: dict, step, clear, warmup: int, steps: int) -> bool:
    """Fill ``row`` with the timing of ``step`` (or why it could not run); True if it ran."""
    from .gpu import measure

    try:
        row.update(measure(step, warmup, steps, clear))
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
    except Exception as err:  # a library that fails here is a result, not a crash of the whole table
        row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return row["status"] == "ok"


def _loss_variant(variant, hidden, weight, targets, reference, warmup: int, steps: int) -> dict:
    fn = _loss_fn(variant)
    row = {"case": f"loss:{hidden.shape[0]}:{weight.shape[0] - 1}", "variant": variant}

    def clear():
        hidden.grad = None
        weight.grad = None

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(hidden, weight, targets)
        loss.backward()
        return loss

    if _run(row, step, clear, warmup, steps):
        row["loss"] = float(step())
        if reference is not None:
            ref_loss, ref_grads = reference
            row["loss_vs_chunked_fp32"] = abs(row["loss"] - ref_loss)
            for name, got, want in (("hidden", hidden.grad, ref_grads[0]), ("weight", weight.grad, ref_grads[1])):
                row[f"grad_{name}_rel_err"] = float((got - want).abs().max() / want.abs().max())
    clear()
    return row


def _cut_cross_entropy(hidden, weight, targets):
    from cut_cross_entropy import linear_cross_entropy

    from ..fused_losses import classifier_operands

    h, classifier, shifted = classifier_operands(hidden, weight, targets)
    with torch.autocast("cuda", enabled=False):
        return linear_cross_entropy(h, classifier, shifted, filter_eps=None, impl="cce").float()


def loss_case(tokens: int, items: int, variants: list[str], warmup: int, steps: int) -> list[dict]:
    from .gpu import _cleanup

    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = (torch.randn(items + 1, HIDDEN, device="cuda", generator=gen) * 0.05).requires_grad_()
    hidden = torch.randn(tokens, HIDDEN, device="cuda", generator=gen).requires_grad_()
    targets = torch.randint(1, items + 1, (tokens,), device="cuda", generator=gen)
    reference = None
    if tokens * items <= 2**31:  # fp32 loss and gradients of the chunked loss, for the agreement columns
        loss = _loss_fn("chunked")(hidden, weight, targets)
        reference = (float(loss), torch.autograd.grad(loss, (hidden, weight)))
    rows = []
    for variant in variants:
        rows.append(_loss_variant(variant, hidden, weight, targets, reference, warmup, steps))
        _cleanup()
        logger.info("%s", rows[-1])
    return rows


def _model_variant(variant: str, config, seq_len: int, warmup: int, steps: int) -> dict:
    from blossom_hf import BlossomRecModel

    from ..losses import positions_with_targets
    from .gpu import TOKENS, _model_inputs

    torch.manual_seed(0)
    model = BlossomRecModel(config).to("cuda").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels = _model_inputs(config, TOKENS // seq_len, seq_len, seq_len + 1)
    fn = None if variant == "logits" else _loss_fn(variant)
    row = {"case": f"model:{seq_len}:{config.attention_type}", "variant": variant,
           "backend": "triton" if config.attention_type == "blossom" else "sdpa"}  # fmt: skip

    def clear():
        optimizer.zero_grad(set_to_none=True)

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fn is None:
                loss = model(input_ids=ids, labels=labels).loss
            else:
                out = model(input_ids=ids, return_logits=False)
                hidden, targets = positions_with_targets(out.last_hidden_state, ids, labels)
                loss = fn(hidden, model.item_embeddings.weight, targets)
        loss.backward()
        optimizer.step()
        return loss

    _run(row, step, clear, warmup, steps)
    return row


def model_case(seq_len: int, attention_type: str, variants: list[str], warmup: int, steps: int) -> list[dict]:
    from blossom_hf import BlossomRecConfig

    from .gpu import CATALOGUE, _cleanup

    backend = "triton" if attention_type == "blossom" else "sdpa"
    config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)  # fmt: skip
    rows = []
    for variant in variants:
        rows.append(_model_variant(variant, config, seq_len, warmup, steps))
        _cleanup()
        logger.info("%s", rows[-1])
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| case | variant | ms (median) | peak MiB | loss | loss - chunked fp32 | grad h rel err | grad W rel err "
             "| status |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, float | int) else "-"

    for r in rows:
        lines.append(f"| {r['case']} | {r['variant']} | {num(r.get('ms'), '.2f')} | {num(r.get('peak_mib'), '.0f')} | "
                     f"{num(r.get('loss'), '.4f')} | {num(r.get('loss_vs_chunked_fp32'), '.1e')} | "
                     f"{num(r.get('grad_hidden_rel_err'), '.1e')} | {num(r.get('grad_weight_rel_err'), '.1e')} | "
                     f"{r['status']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blossom_hf.benchmarks.fused_ce", description=HELP)
    parser.add_argument("--cases", nargs="+", default=list(CASES), help="loss:TOKENS:ITEMS or model:L:ATTENTION")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; later cases are skipped")
    parser.add_argument("--out-dir", required=True, help="writes fused_ce.json and fused_ce.md here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        print("fused_ce needs a CUDA GPU (the fused losses are Triton kernels)", file=sys.stderr)
        return 2
    import importlib.util

    modules = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}
    variants = [v for v in args.variants if v not in modules or importlib.util.find_spec(modules[v]) is not None]
    missing = sorted(set(args.variants) - set(variants))
    if missing:
        logger.warning("not installed, so not measured: %s", ", ".join(missing))
    started, rows, skipped = time.time(), [], []
    for case in args.cases:
        if args.time_budget is not None and time.time() - started > args.time_budget:
            skipped.append(case)
            continue
        kind, first, second = case.split(":")
        if kind == "loss":
            rows += loss_case(int(first), int(second), variants, args.warmup, args.steps)
        elif kind == "model":
            rows += model_case(int(first), second, variants, args.warmup, args.steps)
        else:
            raise SystemExit(f"unknown case {case!r}: use loss:TOKENS:ITEMS or model:L:ATTENTION")
    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv)}  # fmt: skip
    for name in ("triton", "transformers", "liger_kernel", "cut_cross_entropy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "installed")
        except ImportError:
            versions[name] = None
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_ce.json").write_text(json.dumps({"versions": versions, "rows": rows, "skipped": skipped}, indent=1))
    (out / "fused_ce.md").write_text(markdown(rows) + (f"\nskipped (time budget): {skipped}\n" if skipped else ""))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
