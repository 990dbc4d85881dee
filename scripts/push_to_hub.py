#!/usr/bin/env python
"""Upload an exported model folder (scripts/export_checkpoint.py, scripts/finetune.py) to the Hugging Face Hub.

The folder is checked first: it must be a complete export (config.json with auto_map, model.safetensors,
item_vocabulary.json, README.md, metrics.json, sample_scores.json, the model's *.py files) and hold
nothing else. The token comes from the usual places: $HF_TOKEN, or `hf auth login` /
`huggingface-cli login`.

Examples:
  python scripts/push_to_hub.py model_cards/blossomrec-ml1m --repo-id ORG/blossomrec-ml1m --dry-run
  python scripts/push_to_hub.py model_cards/blossomrec-ml1m --repo-id ORG/blossomrec-ml1m --private
  python scripts/push_to_hub.py runs/ft/hub --repo-id ORG/blossomrec-ft --revision experiment --create-branch
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

LOGGER = logging.getLogger("blossom_hf.scripts.push_to_hub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="push_to_hub.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="the exported folder")
    parser.add_argument("--repo-id", required=True, help="target repository, ORG/NAME")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to upload to (default: main)")
    parser.add_argument("--create-branch", action="store_true", help="create --revision if it does not exist")
    parser.add_argument("--commit-message", default="Upload BlossomRec checkpoint", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--endpoint", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--token", help="token (default: $HF_TOKEN or the saved login)")
    return parser


def describe(folder: Path) -> list[tuple[str, int]]:
    """``(name, bytes)`` of every file to upload, after checking the folder is a complete export."""
    from blossom_hf.hub import check_folder_contents

    names = check_folder_contents(folder)
    return [(name, (folder / name).stat().st_size) for name in names]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"push_to_hub.py: {folder} is not a folder", file=sys.stderr)
        return 2
    try:
        files = describe(folder)
    except ValueError as err:
        print(f"push_to_hub.py: {err}", file=sys.stderr)
        return 2
    target = f"{args.repo_id}@{args.revision or 'main'}" + (" (private)" if args.private else "")
    endpoint = args.endpoint or "the default endpoint"
    print(f"{'Would upload' if args.dry_run else 'Uploading'} {len(files)} files "
          f"({_size(sum(s for _, s in files))}) from {folder} to {target} on {endpoint}:")  # fmt: skip
    width = max(len(name) for name, _ in files)
    for name, size in files:
        print(f"  {name:<{width}}  {_size(size):>10}")
    if args.dry_run:
        print("Dry run: nothing uploaded.")
        return 0

    from huggingface_hub import HfApi

    api = HfApi(endpoint=args.endpoint, token=args.token)
    api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
    if args.revision and args.create_branch:
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=args.repo_id, folder_path=str(folder), repo_type="model", revision=args.revision,
        commit_message=args.commit_message, create_pr=args.create_pr,
        allow_patterns=[name for name, _ in files],
    )  # fmt: skip
    print(f"Uploaded: {getattr(commit, 'commit_url', commit)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
