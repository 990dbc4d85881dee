#!/usr/bin/env python
"""Collect the metrics.json files of many training runs into one table (Markdown and JSON).

Runs whose folder names differ only in a trailing "-s<seed>" are grouped; the table shows the mean and
the standard deviation over seeds (sample std; "-" with one seed) of the test metrics, under both the
full-ranking and the uni100 protocol, plus the best epoch and the mean training time per epoch.

Example:
  python scripts/dev/collect_results.py results/ --output results/summary.json > results/RESULTS.md
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collect_results.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="folder whose sub-folders hold metrics.json files (searched recursively)")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="which metrics (default: test)")
    parser.add_argument("--output", help="also write the grouped numbers as JSON here")
    return parser


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(folder: Path, split: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(folder.rglob("metrics.json")):
        record = json.loads(path.read_text())
        name = re.sub(r"-s\d+$", "", path.parent.name)
        groups[name].append(record)
    summary: dict[str, dict[str, Any]] = {}
    for name, records in groups.items():
        row: dict[str, Any] = {"runs": len(records), "seeds": [r.get("seed") for r in records]}
        for protocol, metric in COLUMNS:
            values = [r[split][protocol][metric] for r in records if protocol in r.get(split, {})]
            if values:
                row[f"{protocol}_{metric}"] = mean_std(values)
        epochs = [r["best"]["epoch"] for r in records if r.get("best", {}).get("epoch") is not None]
        if epochs:
            row["best_epoch"] = mean_std(epochs)
        per_epoch = [
            e["epoch_train_seconds"] for r in records for e in r.get("epochs", []) if "epoch_train_seconds" in e
        ]
        if per_epoch:
            row["seconds_per_epoch"] = mean_std(per_epoch)
        first = records[0]
        row["attention"] = first.get("model_config", {}).get("attention_type")
        row["window"] = first.get("model_config", {}).get("max_history_length")
        row["examples"] = first.get("training", {}).get("example_style")
        row["device"] = first.get("device")
        summary[name] = row
    return summary


def format_cell(value: tuple[float, float | None] | None, digits: int = 4) -> str:
    if value is None:
        return ""
    mean, std = value
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = build_parser().parse_args(argv)
    summary = summarize(Path(args.folder), args.split)
    header = ["run", "attention", "L", "examples", "seeds"] + [f"{p} {m}" for p, m in COLUMNS]
    header += ["best epoch", "s/epoch"]
    print(f"{args.split} metrics (mean ± std over seeds; ties pessimistic; uni100 negatives drawn once)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, row in summary.items():
        cells = [name, str(row["attention"]), str(row["window"]), str(row["examples"]), str(row["runs"])]
        cells += [format_cell(row.get(f"{p}_{m}")) for p, m in COLUMNS]
        cells += [format_cell(row.get("best_epoch"), 1), format_cell(row.get("seconds_per_epoch"), 1)]
        print("| " + " | ".join(cells) + " |")
    devices = sorted({str(row["device"]) for row in summary.values()})
    print(f"\ndevice(s): {', '.join(devices)}")
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
