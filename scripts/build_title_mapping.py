#!/usr/bin/env python
"""Build an item mapping between two catalogues that number the same items differently, by title and year.

Writes a TSV of "old_id<TAB>new_id" pairs for scripts/finetune.py --mapping, and prints the match rate.
Titles are compared after normalisation (case, accents, punctuation, alternative titles in parentheses,
MovieLens' trailing articles: "Shawshank Redemption, The (1994)" = "The Shawshank Redemption (1994)");
a title that fits several old items is left unmatched rather than guessed.

Example (pretrained on ML-1M, fine-tuning on ML-100K):
  python scripts/build_title_mapping.py ../shared/data/ml-1m/movies.dat ../shared/data/ml-100k/u.item \\
      --output runs/ml1m_to_ml100k.tsv
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from blossom_hf.catalogs import CATALOG_FORMATS, build_title_mapping
from blossom_hf.finetuning import write_item_mapping


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_title_mapping.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("old_catalog", help="catalogue of the pretrained model's items (e.g. ML-1M movies.dat)")
    parser.add_argument("new_catalog", help="catalogue of the new data's items (e.g. ML-100K u.item)")
    parser.add_argument("--old-format", default="auto", choices=CATALOG_FORMATS)
    parser.add_argument("--new-format", default="auto", choices=CATALOG_FORMATS)
    parser.add_argument("--output", required=True, help="TSV to write (old_id, new_id)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        match = build_title_mapping(args.old_catalog, args.new_catalog, args.old_format, args.new_format)
    except (OSError, ValueError) as err:
        print(f"build_title_mapping.py: error: {err}", file=sys.stderr)
        return 2
    path = write_item_mapping(match.pairs, args.output)
    report = match.report()
    print(f"Matched {report['matched_new_items']} of {report['new_items']} new items "
          f"({100 * match.match_rate:.1f}%); {100 * match.old_coverage:.1f}% of the {report['old_items']} old items "
          f"covered; {report['ambiguous_new']} ambiguous, {report['unmatched_new']} unmatched. "
          f"Wrote {path}.")  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
