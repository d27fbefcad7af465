"""The state of the loopback Hugging Face Hub (`hub_server`): users and their tokens, repositories with their commits,
branches and files (regular git blobs, or LFS objects kept by sha256), and the Hub's rules about who may read or
write what. Kept apart from the HTTP handling so that tests can set repositories up directly."""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field

import yaml

# the patterns of the .gitattributes the Hub puts in every new model repository (files stored with LFS)
LFS_PATTERNS = ("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.mlmodel",
                "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl",
                "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tar.*", "*.tflite", "*.tgz", "*.wasm", "*.xz",
                "*.zip", "*.zst", "*tfevents*")
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
LFS_THRESHOLD = 10 * 1000 * 1000  # larger files always go to LFS
CREATING_ROLES = ("admin", "write", "contributor")
KNOWN_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
                  "cc0-1.0", "openrail", "other"}  # a few of the Hub's licence ids


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub sends as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a commit: its bytes and whether the Hub stores it with LFS."""

    data: bytes
    lfs: bool

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @functools.cached_property
    def oid(self) -> str:
        """What the Hub compares uploads with: the sha256 of an LFS file, the git blob id of a regular one."""
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    files: dict[str, HubFile]
    message: str
    parent: str | None = None


@dataclass
class HubUser:
    name: str
    token: str
    orgs: dict[str, str] = field(default_factory=dict)  # organisation -> role in it
    role: str = "write"  # the token's: write, read or fineGrained


@dataclass
class HubRepo:
    repo_id: str
    private: bool = False
    gated: bool = False
    allowed: set[str] = field(default_factory=set)  # users granted access to a gated repository
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.partition("/")[0]

    def commit_at(self, revision: str | None) -> Commit | None:
        """The commit a branch name or commit id designates."""
        oid = self.branches.get(revision or "main", revision)
        return self.commits.get(oid) if oid else None


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """How the Hub decides: a .gitattributes LFS pattern, a large file, or a binary one."""
    name = path.rpartition("/")[2]
    return (any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS) or size > LFS_THRESHOLD
            or b"\0" in sample)


class HubState:
    """Users, repositories and LFS objects, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, HubUser] = {}
        self.repos: dict[str, HubRepo] = {}
        self.renamed: dict[str, str] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.counter = 0

    def add_user(self, name: str, token: str, *, orgs: dict[str, str] | None = None, role: str = "write") -> HubUser:
        with self.lock:
            self.users[token] = HubUser(name, token, dict(orgs or {}), role)
            return self.users[token]

    def user(self, authorization: str | None) -> HubUser | None:
        """The user a request's `Authorization: Bearer TOKEN` header names (None: anonymous)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        return self.users.get(authorization.split(None, 1)[1].strip())

    def can_read(self, repo: HubRepo, user: HubUser | None) -> bool:
        if not repo.private:
            return True
        return user is not None and (user.name == repo.owner or repo.owner in user.orgs)

    def can_create_in(self, namespace: str, user: HubUser | None) -> bool:
        return user is not None and user.role != "read" and (
            user.name == namespace or user.orgs.get(namespace) in CREATING_ROLES)

    def can_write(self, repo: HubRepo, user: HubUser | None) -> bool:
        return user is not None and user.role != "read" and (
            user.name == repo.owner or user.orgs.get(repo.owner) in ("admin", "write"))

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False) -> HubRepo:
        """A new repository whose main branch holds the Hub's .gitattributes, as the Hub makes them."""
        with self.lock:
            repo = HubRepo(repo_id, private=private, gated=gated)
            self.repos[repo_id] = repo
            self.commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit")
            return repo

    def commit(self, repo: HubRepo, files: dict[str, bytes | HubFile], message: str, *, branch: str = "main",
               deleted: tuple[str, ...] = ()) -> Commit:
        """A new commit on `branch` adding (or replacing) `files` and removing `deleted`."""
        with self.lock:
            parent = repo.commit_at(branch)
            tree = dict(parent.files) if parent else {}
            for path in deleted:
                tree.pop(path, None)
            for path, content in files.items():
                item = content if isinstance(content, HubFile) else HubFile(
                    content, is_lfs(path, len(content), content[:512]))
                if item.lfs:
                    self.lfs_objects[item.sha256] = item.data
                tree[path] = item
            self.counter += 1
            oid = hashlib.sha1(f"{repo.repo_id}:{self.counter}:{time.time_ns()}".encode()).hexdigest()
            repo.commits[oid] = Commit(oid, tree, message, parent.oid if parent else None)
            repo.branches[branch] = oid
            return repo.commits[oid]

    def find(self, repo_id: str) -> HubRepo | None:
        with self.lock:
            return self.repos.get(repo_id)


def decode_commit_file(value: dict) -> bytes:
    """The content of a `file` operation of a commit's NDJSON body."""
    if value.get("encoding") == "base64":
        return base64.b64decode(value["content"])
    return str(value["content"]).encode()


def front_matter(card: str) -> dict:
    """The YAML metadata block at the top of a model card, parsed as the Hub parses it ({} when there is none)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", card, re.DOTALL)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}
