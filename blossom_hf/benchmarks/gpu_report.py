"""The GPU benchmark's report: markdown tables, the issue's target verdicts and the plot, from the results dict
that :mod:`blossom_hf.benchmarks.gpu` measures (runs without a GPU; tests/test_benchmark_gpu_report.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["DENSE_LAYER", "DENSE_MODEL", "TOKENS", "markdown", "plot", "targets"]

TOKENS = 262144
DENSE_LAYER = ("full/sdpa bf16 (flash)", "full/flex bf16")
DENSE_MODEL = ("full/sdpa (flash)", "full/flex")


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    return f"{r['ms']:.2f} / {r['peak_mib']:,.0f}"


def _table(section: dict, title: str, batch_of: Callable[[int], int]) -> list[str]:
    if not section:
        return []
    lengths = sorted({int(L) for per in section.values() for L in per})
    keys = list(section)
    lines = [f"### {title}", "", "| L (B) | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for L in lengths:
        lines.append(f"| {L} ({batch_of(L)}) | " + " | ".join(_cell(section[k].get(str(L))) for k in keys) + " |")
    return [*lines, ""]


def _fastest(section: dict, keys, L: int) -> float | None:
    ok = [section.get(k, {}).get(str(L)) for k in keys]
    ok = [r["ms"] for r in ok if r and r["status"] == "ok"]
    return min(ok) if ok else None


def _verdict(value: float, bound: float) -> str:
    ratio = value / bound
    return f"met ({ratio:.2f} of the bound)" if value <= bound else f"missed by {100 * (ratio - 1):.0f}%"


def targets(results: dict) -> list[str]:
    """The issue-8 targets table: met / missed by how much."""
    lines = ["### Targets", "", "| target | L | blossom/triton | fastest dense | ratio | bound | result |",
             "|---|---|---|---|---|---|---|"]
    layer, model, inf = results["layer"], results["model"], results["inference"]
    tri = layer.get("blossom/triton bf16", {})
    for L in sorted(int(x) for x in tri):
        r, fastest = tri[str(L)], _fastest(layer, DENSE_LAYER, L)
        if r["status"] != "ok" or fastest is None:
            continue
        bound = 1.25 if L <= 512 else 1.0 if L <= 2048 else 0.75 if L <= 4096 else 0.5
        ratio = r["ms"] / fastest
        lines.append(f"| layer fwd+bwd bf16 | {L} | {r['ms']:.2f} | {fastest:.2f} | {ratio:.2f}x | {bound}x | "
                     f"{_verdict(ratio, bound)} |")
        mem = [layer.get(k, {}).get(str(L)) for k in DENSE_LAYER]
        mem = [m["peak_mib"] for m in mem if m and m["status"] == "ok"]
        if mem:
            mratio = r["peak_mib"] / min(mem)
            lines.append(f"| layer peak memory | {L} | {r['peak_mib']:,.0f} MiB | {min(mem):,.0f} MiB | "
                         f"{mratio:.2f}x | 1.5x | {_verdict(mratio, 1.5)} |")
    for L in sorted(int(x) for x in model.get("blossom/triton", {})):
        r, fastest = model["blossom/triton"][str(L)], _fastest(model, DENSE_MODEL, L)
        if r["status"] != "ok" or fastest is None:
            continue
        bound = 1.1 if L <= 512 else 1.0
        ratio = r["ms"] / fastest
        lines.append(f"| model training step | {L} | {r['ms']:.2f} | {fastest:.2f} | {ratio:.2f}x | {bound}x | "
                     f"{_verdict(ratio, bound)} |")
    for mode, full_key in (("bf16-autocast", "full/sdpa bf16-autocast (flash)"),
                           ("fp32", "full/sdpa fp32 (math kernel, GQA)"),
                           ("bf16-autocast cuda-graph", "full/sdpa bf16-autocast (flash) cuda-graph"),
                           ("fp32 cuda-graph", "full/sdpa fp32 (math kernel, GQA) cuda-graph")):
        for L, r in sorted(inf.get(f"blossom/triton {mode}", {}).items(), key=lambda kv: int(kv[0])):
            full = inf.get(full_key, {}).get(L)
            if r["status"] != "ok" or not full or full["status"] != "ok":
                continue
            bound = 1.25 if int(L) <= 512 else 1.0
            ratio = r["ms"] / full["ms"]
            lines.append(f"| inference fwd {mode} | {L} | {r['ms']:.2f} | {full['ms']:.2f} | {ratio:.2f}x | "
                         f"{bound}x | {_verdict(ratio, bound)} |")
    return [*lines, ""]


def _interleaving(results: dict) -> str:
    rounds = {r.get("rounds", 1) for table in ("layer", "model", "inference") for rows in results[table].values()
              for r in rows.values() if r.get("status") == "ok"}
    rounds.discard(1)
    if not rounds:
        return ""
    return (f" The layer, model (FlexAttention's excepted) and inference rows of one L were timed side by side in "
            f"{'/'.join(str(r) for r in sorted(rounds))} interleaved rounds.")


def markdown(results: dict) -> str:
    env = results["env"]
    head = [f"Measured {env['date_utc']} UTC on {env['gpu']} ({env['sms']} SMs), torch {env['torch']} "
            f"(CUDA {env['cuda']}), triton {env['triton']}, transformers {env['transformers']}, "
            f"Python {env['python']}. Command: `{env['command']}`. Entries are median ms / peak MiB above inputs."
            + _interleaving(results), ""]
    body = (_table(results["layer"], "One layer, fwd + bwd", lambda L: TOKENS // L)
            + _table(results["ops"], "Attention operator only, fwd + bwd, bf16", lambda L: TOKENS // L)
            + _table(results["model"], "Whole-model training step", lambda L: TOKENS // L)
            + _table(results["inference"], "GPU inference, whole-model forward only",
                     lambda L: max(1, TOKENS // L // 4))
            + targets(results))
    if results.get("skipped"):
        body += ["Not run (time budget): " + ", ".join(results["skipped"]), ""]
    return "\n".join(head + body)


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
    env = results["env"]
    fig.suptitle(f"BlossomRec attention, {env['gpu']}, torch {env['torch']}, triton {env['triton']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
