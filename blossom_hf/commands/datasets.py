"""``blossom-hf datasets``: list the dataset presets, show where one is, or download it ahead of training.

    blossom-hf datasets list [--data-dir DIR]
    blossom-hf datasets path ml-1m [--data-dir DIR]
    blossom-hf datasets download ml-1m --accept-license [--data-dir DIR]

Presets are looked for in ``--data-dir``, ``$BLOSSOM_DATA_DIR`` and the user cache (see ``docs/DATASETS.md``);
``download`` fetches a missing one into the cache, checking its checksums, after the consent its terms require.
"""

from __future__ import annotations

import argparse
import sys

from ..data.presets import ACCEPT_LICENSE_ENV, PRESETS, dataset_cache_dir, find_preset, resolve_preset

HELP = "list the dataset presets, show where one is found, or download one into the user cache"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blossom-hf datasets", description=HELP)
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every preset, where it is found (or that it is missing), its terms")
    where = actions.add_parser("path", help="print the interaction file of a preset (never downloads)")
    fetch = actions.add_parser("download", help="download a preset into the user cache unless it is found already")
    for sub in (where, fetch):
        sub.add_argument("name", choices=list(PRESETS), help="the preset")
    for sub in (listing, where, fetch):
        sub.add_argument("--data-dir", help="folder searched first (then $BLOSSOM_DATA_DIR, then the user cache)")
    fetch.add_argument(
        "--accept-license", action="store_true",
        help=f"accept the dataset's terms (MovieLens needs it; or set {ACCEPT_LICENSE_ENV})",
    )  # fmt: skip
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    if args.action == "list":
        out.write(f"user cache: {dataset_cache_dir()}\n")
        for name, preset in PRESETS.items():
            found = find_preset(name, args.data_dir)
            where = f"{found.path} ({found.origin})" if found else "not on disk (downloaded on first use)"
            consent = "; needs --accept-license to download" if preset.terms.requires_consent else ""
            pad = " " * 13
            out.write(f"{name:12s} {preset.description}\n{pad}{where}\n{pad}terms: {preset.terms.url}{consent}\n")
        return 0
    if args.action == "path":
        out.write(f"{resolve_preset(args.name, args.data_dir, download=False).path}\n")
        return 0
    found = resolve_preset(args.name, args.data_dir, accept_license=True if args.accept_license else None,
                           progress=not args.no_progress)  # fmt: skip
    out.write(f"{found.path} ({found.origin}; format {found.format})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
