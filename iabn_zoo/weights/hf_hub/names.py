"""Hub names: `hf-hub:ORG/NAME[@REVISION]`, the one spelling of a Hugging Face Hub repository as a MODEL or a source."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import InvalidArgumentError

PREFIX = "hf-hub:"
# the Hub's rules for repository ids: ORG/NAME of letters, digits, '-', '_', '.', no '--' or '..', at most 96 each
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_PART}/{_PART}")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
COMMIT = re.compile(r"[0-9a-f]{40}")
FORM = "hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION (a branch, tag or commit)"


@dataclass(frozen=True)
class HubName:
    """A repository on the Hub and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def text(self) -> str:
        """The name as users write it."""
        return PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")

    def at(self, revision: str) -> HubName:
        """The same repository at another revision (a commit, to pin what was resolved)."""
        return HubName(self.repo_id, revision)

    def __str__(self) -> str:
        return self.text


def is_hub_name(value: object) -> bool:
    """Whether `value` is spelled as a Hub name (it may still be malformed: `parse_hub_name` says)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_hub_name(value: str, *, parameter: str = "model") -> HubName:
    """The repository and revision of `hf-hub:ORG/NAME[@REVISION]`; anything else raises InvalidArgumentError."""
    if not is_hub_name(value):
        raise InvalidArgumentError(f"{value!r} is not a Hub name: write {FORM}")
    repo_id, _, revision = value[len(PREFIX):].partition("@")
    if not REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise InvalidArgumentError(
            f"{parameter} {value!r}: {repo_id!r} is not a Hub repository id; write {FORM} (ORG and NAME of letters, "
            "digits, '-', '_' and '.', not starting or ending with '-' or '.', no '--' or '..')")
    if "@" in value[len(PREFIX):] and (not REVISION.fullmatch(revision) or ".." in revision or "//" in revision):
        raise InvalidArgumentError(f"{parameter} {value!r}: {revision!r} is not a revision; write {FORM}")
    return HubName(repo_id, revision or None)


def is_commit(revision: str | None) -> bool:
    """Whether `revision` is a full commit id (immutable: a cached file of it is never checked again)."""
    return revision is not None and COMMIT.fullmatch(revision) is not None
