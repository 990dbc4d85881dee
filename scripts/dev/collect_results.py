#!/usr/bin/env python
"""Collect the run records (metrics.json) of many training runs into tables (Markdown and JSON) and plots.

A record is any ``metrics.json`` under the folder (named by its parent folder) or any ``<name>.json`` holding a run
record (named by its stem). Runs whose names differ only in a trailing "-s<seed>" are one row: the mean and the
sample standard deviation over seeds ("-" with one seed) of the test metrics under full ranking and uni100, then
what the run cost and how it ended: epochs run and best epoch per seed, whether a time limit or epoch budget
capped it (else early stopping ended it), the median training seconds per epoch, the median seconds per
validation, the seconds from the start of training to the best epoch, and the peak GPU memory
(``torch.cuda.max_memory_allocated``). Runs that left no record are listed from ``<name>.failed.txt`` files
(the last lines of their log) when present.

Examples:
  python scripts/dev/collect_results.py results/ --output results/summary.json > results/RESULTS.md
  python scripts/dev/collect_results.py docs/results/2026-12-01 --plots docs/results/2026-12-01
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = (("full", "ndcg@10"), ("full", "hit@10"), ("uni100", "ndcg@10"), ("uni100", "hit@10"), ("uni100", "mrr@10"))
GIB = 1024**3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collect_results.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="folder holding run records (searched recursively)")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="which metrics (default: test)")
    parser.add_argument("--output", help="also write the grouped numbers as JSON here")
    parser.add_argument("--plots", help="write NDCG@10-vs-window and validation-vs-time plots (PNG) into this folder")
    return parser


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def load_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``{run name: record}`` of every run record under ``folder``."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not (isinstance(record, dict) and "test" in record and "model_config" in record):
            continue
        name = path.parent.name if path.name == "metrics.json" else path.stem
        records[name] = record
    return records


def failed_runs(folder: Path) -> dict[str, str]:
    """``{run name: last log lines}`` of the ``<name>.failed.txt`` files under ``folder``."""
    return {p.name.removesuffix(".failed.txt"): p.read_text().strip() for p in sorted(folder.rglob("*.failed.txt"))}


def group_name(name: str) -> str:
    return re.sub(r"-s\d+$", "", name)


def whole_epoch_curve(record: dict[str, Any], key: str = "eval_full_ndcg@10") -> list[tuple[float, float, float]]:
    """``[(epoch, elapsed seconds, value)]`` of the validations at whole epochs."""
    curve = []
    for entry in record.get("epochs", []):
        epoch, value = entry.get("epoch"), entry.get(key)
        if epoch is None or value is None or not float(epoch).is_integer():
            continue
        curve.append((float(epoch), float(entry.get("elapsed_seconds") or float("nan")), float(value)))
    return curve


def summarize(folder: Path, split: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, record in load_records(folder).items():
        groups[group_name(name)].append((name, record))
    failures: dict[str, list[str]] = defaultdict(list)
    for name in failed_runs(folder):
        failures[group_name(name)].append(name)
    summary: dict[str, dict[str, Any]] = {}
    for name in sorted(set(groups) | set(failures), key=_sort_key):
        runs = sorted(groups.get(name, []), key=lambda item: item[1].get("seed") or 0)
        records = [record for _, record in runs]
        row: dict[str, Any] = {"runs": len(records), "seeds": [r.get("seed") for r in records],
                               "no_record": sorted(re.sub(r".*-s(\d+)$", r"\1", n) for n in failures.get(name, []))}
        for protocol, metric in COLUMNS:
            values = [r[split][protocol][metric] for r in records if protocol in r.get(split, {})]
            if values:
                row[f"{protocol}_{metric}"] = mean_std(values)
        row["epochs_run"] = [r.get("epochs_run") for r in records]
        row["best_epoch"] = [r.get("best", {}).get("epoch") for r in records]
        # records written before the "capped" field: the time limit is all they say
        row["capped"] = [r["capped"] if r.get("capped") is not None
                         else r.get("timings", {}).get("stopped_by_time_limit") for r in records]  # fmt: skip
        row["stop_reason"] = sorted({str(r.get("stop_reason")) for r in records})
        for key, field in (("train_seconds_per_epoch", "train_seconds_per_epoch"), ("eval_seconds", "eval_seconds")):
            values = [r[field]["median"] for r in records if (r.get(field) or {}).get("median") is not None]
            if not values and key == "train_seconds_per_epoch":  # records written before the summary field
                values = [statistics.median(s) for r in records if (s := _epoch_seconds(r))]
            if values:
                row[key] = mean_std(values)
        times = [r["time_to_best_seconds"] for r in records if r.get("time_to_best_seconds") is not None]
        if times:
            row["time_to_best_seconds"] = mean_std(times)
        memory = [r["peak_gpu_memory_bytes"]["allocated"] / GIB for r in records if r.get("peak_gpu_memory_bytes")]
        if memory:
            row["peak_gpu_memory_gib"] = mean_std(memory)
        if records:
            first = records[0]
            config = first.get("model_config", {})
            row["attention"] = config.get("attention_type")
            row["backend"] = first.get("backend")
            row["window"] = config.get("max_history_length")
            row["examples"] = first.get("training", {}).get("example_style")
            row["early_stopping_metric"] = first.get("training", {}).get("early_stopping_metric")
            row["dataset"] = first.get("data", {}).get("source") or first.get("command", [None] * 4)[3]
            row["device"] = first.get("device")
            row["revision"] = sorted({str(r.get("source_revision")) for r in records})
            row["command"] = _command_pattern(first.get("command"))
        summary[name] = row
    return summary


def _epoch_seconds(record: dict[str, Any]) -> list[float]:
    return [e["epoch_train_seconds"] for e in record.get("epochs", []) if "epoch_train_seconds" in e]


def _sort_key(name: str) -> tuple:
    match = re.search(r"-L(\d+)-", name)
    return (name.split("-L")[0], int(match.group(1)) if match else 0, name)


def _command_pattern(command: Any) -> str | None:
    """The recorded command with the seed, output folder and deadline generalised."""
    if not isinstance(command, list):
        return command
    words, skip = [], None
    for word in command:
        if skip is not None:
            words.append(skip)
            skip = None
            continue
        words.append(word)
        skip = {"--seed": "S", "--output-dir": "OUT/NAME", "--time-limit-at": "DEADLINE"}.get(word)
    return " ".join(words)


def format_cell(value: tuple[float, float | None] | None, digits: int = 4) -> str:
    if value is None:
        return ""
    mean, std = value
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _numbers(values: list[Any], digits: int = 0) -> str:
    return "/".join("–" if v is None else f"{float(v):.{digits}f}" for v in values)


def markdown_table(summary: dict[str, dict[str, Any]], split: str = "test") -> str:
    header = ["run", "attention (backend)", "L", "examples", "seeds"] + [f"{p} {m}" for p, m in COLUMNS]
    header += ["epochs run", "best epoch", "capped", "train s/epoch", "eval s", "s to best", "peak GiB"]
    lines = [f"{split} metrics (mean ± std over seeds; ties pessimistic; uni100 negatives drawn once)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for name, row in summary.items():
        if not row["runs"]:
            missing = ", ".join(row["no_record"])
            lines.append(f"| {name} | | | | 0 (no record: seeds {missing}) |" + " |" * (len(header) - 5))
            continue
        seeds = ",".join(str(s) for s in row["seeds"])
        if row["no_record"]:
            seeds += f" (no record: {','.join(row['no_record'])})"
        capped = row["capped"]
        capped_cell = "all" if all(capped) else "none" if not any(capped) else f"{sum(map(bool, capped))}/{len(capped)}"
        cells = [name, f"{row['attention']} ({row['backend']})", str(row["window"]), str(row["examples"]), seeds]
        cells += [format_cell(row.get(f"{p}_{m}")) for p, m in COLUMNS]
        cells += [_numbers(row["epochs_run"]), _numbers(row["best_epoch"]), capped_cell,
                  format_cell(row.get("train_seconds_per_epoch"), 2), format_cell(row.get("eval_seconds"), 2),
                  format_cell(row.get("time_to_best_seconds"), 0), format_cell(row.get("peak_gpu_memory_gib"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({str(row.get("device")) for row in summary.values() if row["runs"]})
    commands = {row["command"] for row in summary.values() if row.get("command")}
    lines += ["", f"device(s): {', '.join(devices)}", "", "commands (S = seed):", ""]
    lines += [f"    {command}" for command in sorted(commands)]
    return "\n".join(lines)


def equal_epochs(folder: Path) -> dict[str, dict[str, Any]]:
    """Validation NDCG@10 of both attention types at the same epoch: for every ``<data>-L<w>`` (default protocol),
    the last whole epoch that every run of it reached, and the mean ± std over seeds at that epoch."""
    cells: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for name, record in load_records(folder).items():
        match = re.fullmatch(r"(.+-L\d+)-(blossom|full)-s\d+", name)
        if match:
            cells[match.group(1)][match.group(2)].append(record)
    table: dict[str, dict[str, Any]] = {}
    for cell, by_attention in sorted(cells.items(), key=lambda item: _sort_key(item[0] + "-")):
        if set(by_attention) != {"blossom", "full"}:
            continue
        curves = {a: [whole_epoch_curve(r) for r in rs] for a, rs in by_attention.items()}
        common = min(max(c[0] for c in curve) for runs in curves.values() for curve in runs if curve)
        row: dict[str, Any] = {"epoch": common}
        for attention in curves:
            for protocol, key in (("full", "eval_full_ndcg@10"), ("uni100", "eval_uni100_ndcg@10")):
                values = [v for r in by_attention[attention] for e, _, v in whole_epoch_curve(r, key) if e == common]
                row[f"{attention}_{protocol}"] = mean_std(values)
                row[f"{attention}_seeds"] = len(values)
        table[cell] = row
    return table


def equal_epochs_table(folder: Path) -> str:
    lines = ["validation NDCG@10 at the last epoch every run of the pair reached (mean ± std over seeds)", "",
             "| data, window | epoch | BlossomRec full | full attn. full | BlossomRec uni100 | full attn. uni100 |"
             " seeds (B/F) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for cell, row in equal_epochs(folder).items():
        lines.append(f"| {cell} | {row['epoch']:.0f} | {format_cell(row['blossom_full'])}"
                     f" | {format_cell(row['full_full'])} | {format_cell(row['blossom_uni100'])}"
                     f" | {format_cell(row['full_uni100'])}"
                     f" | {row['blossom_seeds']}/{row['full_seeds']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# plots


def plot(folder: Path, out: Path, prefix: str = "ml1m") -> list[Path]:
    """``<prefix>_ndcg_vs_window.png`` and ``<prefix>_valid_vs_time.png`` for the runs named ``<prefix>-L<w>-...``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {n: r for n, r in load_records(folder).items()
               if re.fullmatch(rf"{prefix}-L\d+-(blossom|full)-s\d+", n)}  # fmt: skip
    if not records:
        return []
    out.mkdir(parents=True, exist_ok=True)
    colors = {"blossom": "tab:green", "full": "tab:blue"}
    labels = {"blossom": "BlossomRec (triton)", "full": "full attention (sdpa)"}
    windows = sorted({r["model_config"]["max_history_length"] for r in records.values()})
    written = []

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for panel, (protocol, title) in zip(axes, (("full", "full ranking"), ("uni100", "uni100")), strict=True):
        for attention in ("blossom", "full"):
            xs, means, stds = [], [], []
            for window in windows:
                values = [r["test"][protocol]["ndcg@10"] for r in records.values()
                          if r["model_config"]["attention_type"] == attention
                          and r["model_config"]["max_history_length"] == window]  # fmt: skip
                offset = 1.03 if attention == "full" else 0.97
                panel.scatter([window * offset] * len(values), values, color=colors[attention], s=12, alpha=0.5)
                if values:
                    xs.append(window * offset)
                    means.append(statistics.fmean(values))
                    stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            panel.errorbar(xs, means, yerr=stds, color=colors[attention], marker="o", capsize=3,
                           label=labels[attention])  # fmt: skip
        panel.set_xscale("log", base=2)
        panel.set_xticks(windows, [str(w) for w in windows])
        panel.set_xlabel("history window L")
        panel.set_ylabel("test NDCG@10 (dots: seeds, bars: mean ± std)")
        panel.set_title(f"ML-1M, {title}; all runs capped", fontsize=10)
        panel.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    written.append(out / f"{prefix}_ndcg_vs_window.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(windows), figsize=(3.2 * len(windows), 3.4), sharey=True, squeeze=False)
    for panel, window in zip(axes[0], windows, strict=True):
        for name, record in sorted(records.items()):
            if record["model_config"]["max_history_length"] != window:
                continue
            attention = record["model_config"]["attention_type"]
            curve = whole_epoch_curve(record)
            panel.plot([c[1] for c in curve], [c[2] for c in curve], color=colors[attention], lw=1, alpha=0.8,
                       label=labels[attention] if name.endswith(f"-s{record.get('seed')}") else None)
        panel.set_title(f"L = {window} (capped by the deadline)")
        panel.set_xlabel("wall-clock s since training began")
        panel.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation full NDCG@10")
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    axes[0][0].legend(unique.values(), unique.keys(), fontsize=7)
    figure.tight_layout()
    written.append(out / f"{prefix}_valid_vs_time.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    return written


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = build_parser().parse_args(argv)
    summary = summarize(Path(args.folder), args.split)
    print(markdown_table(summary, args.split))
    print("\n" + equal_epochs_table(Path(args.folder)))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    if args.plots:
        for path in plot(Path(args.folder), Path(args.plots)):
            print(f"\nwrote {path}")
    return summary


if __name__ == "__main__":
    main()
