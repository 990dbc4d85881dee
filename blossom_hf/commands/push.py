"""`blossom-hf push`: upload an exported model folder (blossom-hf export / finetune) to the Hugging Face Hub.

The folder is checked first: the repo id must be valid; the folder must be a complete export (config.json
with auto_map, model.safetensors, item_vocabulary.json, README.md, metrics.json, sample_scores.json) and hold
nothing else; it must load and reproduce its sample_scores.json (a truncated or damaged weights file, or files
that do not belong together, stop the push). The installed package's model code is added to the upload
(the bundled folders hold artefacts only), replacing any *.py in the folder. --dry-run runs every check and
lists the files. The token comes from the usual places: $HF_TOKEN, or `hf auth login`.

Examples:
  blossom-hf push model_cards/blossomrec-ml1m --repo-id blossom-hf/blossomrec-ml1m --dry-run
  blossom-hf push model_cards/blossomrec-ml1m --repo-id blossom-hf/blossomrec-ml1m --private
  blossom-hf push runs/ft/hub --repo-id ORG/blossomrec-ft --revision experiment --create-branch
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

HELP = "check an exported model folder and upload it (with the model code) to the Hugging Face Hub"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blossom-hf push",
        description=__doc__.split("\n\n")[1],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="the exported folder")
    parser.add_argument("--repo-id", required=True, help="target repository, NAMESPACE/NAME")
    parser.add_argument("--dry-run", action="store_true", help="run every check, list what would be uploaded, stop")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to upload to (default: main)")
    parser.add_argument("--create-branch", action="store_true", help="create --revision if it does not exist")
    parser.add_argument("--commit-message", default="Upload BlossomRec checkpoint", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--endpoint", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--token", help="token (default: $HF_TOKEN or the saved login)")
    return parser


def prepare_upload(folder: Path, staging: Path) -> list[tuple[str, int]]:
    """Check ``folder``, write the upload (artefacts + the package's code) into ``staging``, verify it there;
    return ``(name, bytes)`` of every file to upload."""
    from ..errors import BlossomUserError
    from ..hub import complete_hub_folder, verify_hub_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected an exported Hub folder)")
    complete_hub_folder(folder, staging)
    try:
        verify_hub_folder(staging)
    except OSError as err:  # damaged weights: the model's one-line message, naming the folder pushed
        raise BlossomUserError(str(err).replace(str(staging), str(folder))) from None
    return [(p.name, p.stat().st_size) for p in sorted(staging.iterdir())]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from ..hub import check_repo_id

    hf_logging.disable_progress_bar()
    check_repo_id(args.repo_id)
    folder = Path(args.folder)
    with tempfile.TemporaryDirectory(prefix="blossom-push-") as tmp:
        staging = Path(tmp) / folder.resolve().name
        files = prepare_upload(folder, staging)
        target = f"{args.repo_id}@{args.revision or 'main'}" + (" (private)" if args.private else "")
        endpoint = args.endpoint or "the default endpoint"
        print(f"{'Would upload' if args.dry_run else 'Uploading'} {len(files)} files "
              f"({_size(sum(s for _, s in files))}) from {folder} (with the package's model code) to {target} "
              f"on {endpoint}; the folder loads and reproduces its sample scores:")  # fmt: skip
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
            repo_id=args.repo_id, folder_path=str(staging), repo_type="model", revision=args.revision,
            commit_message=args.commit_message, create_pr=args.create_pr,
        )  # fmt: skip
    print(f"Uploaded: {getattr(commit, 'commit_url', commit)}")
    return 0
