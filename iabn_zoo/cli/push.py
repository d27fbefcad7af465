"""`iabn-zoo push`: publish a finished fine-tuning RUN or a registered weights name to the Hugging Face Hub (or, with
--to-folder, write the same repository into a folder without any network)."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_command, progress_allowed
from .output import emit


def register(subparsers: Any) -> None:
    """Add the `push` sub-command."""
    parser = add_command(
        subparsers, "push", help="publish a RUN or a published weights name to the Hugging Face Hub",
        description="Write MODEL (a finished fine-tuning RUN directory, or a registered weights name: a mirror of "
                    "the published checkpoint, verified by md5 and converted to safetensors) as a repository of "
                    "config.json, model.safetensors, classes.csv and a generated model card (README.md, with the "
                    "run's curves and samples when it has them), and push it to ORG/NAME on the Hugging Face Hub "
                    "(HF_TOKEN or `hf auth login` gives the token; HF_ENDPOINT the Hub). The token and its right to "
                    "write ORG/NAME are checked before anything is made; an existing model card is kept unless "
                    "--replace-card. Needs the `hub` extra (pip install 'iabn-zoo[hub]').")
    parser.add_argument("model", metavar="MODEL", help="a finished RUN directory or a registered weights name")
    parser.add_argument("repo", nargs="?", metavar="ORG/NAME",
                        help="the Hub repository, created if needed (default: none, which needs --to-folder; with it, "
                             "the repository its card's usage lines name)")
    parser.add_argument("--private", action="store_true", help="create the repository private (default: public)")
    parser.add_argument("--revision", metavar="BRANCH", help="the branch to commit to (created from main if needed; "
                                                             "default: main)")
    parser.add_argument("--to-folder", metavar="DIR", help="write the repository into DIR (new or empty) instead of "
                                                          "pushing it; no network (default: push)")
    parser.add_argument("--replace-card", action="store_true",
                        help="replace the model card already on the Hub (default: keep it)")
    parser.add_argument("--message", help="the commit message (default: Upload MODEL with iabn-zoo VERSION)")
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    """Push MODEL to ORG/NAME, or write it into --to-folder; print where it went."""
    from ..errors import InvalidArgumentError
    from ..weights.hf_hub.publish import push_to_hub, save_pretrained

    if args.to_folder is None and args.repo is None:
        raise InvalidArgumentError("give the Hub repository ORG/NAME to push to, or --to-folder DIR to write it "
                                   "without pushing")
    if args.to_folder is not None:
        if args.private or args.revision or args.replace_card or args.message:
            raise InvalidArgumentError("--private, --revision, --replace-card and --message apply to a push; "
                                       "--to-folder writes a folder only")
        folder = save_pretrained(args.model, args.to_folder, repo_id=args.repo, progress=progress_allowed(args))
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        emit({"folder": str(folder), "files": files}, as_json=args.json)
        return 0
    result = push_to_hub(args.model, args.repo, private=args.private, revision=args.revision,
                         replace_card=args.replace_card, commit_message=args.message,
                         progress=progress_allowed(args))
    emit({"repo": result.repo_id, "revision": result.revision, "commit": result.commit, "url": result.url,
          "files": list(result.files), "card_kept": result.card_kept}, as_json=args.json)
    return 0
