"""A Hugging Face Hub on 127.0.0.1, speaking the parts of the Hub's HTTP protocol that huggingface_hub uses (read
from its source: file_download.py, hf_api.py, _commit_api.py, lfs.py), for tests and benchmarks reached through
`HF_ENDPOINT` (huggingface_hub reads it at import: set it in a subprocess's environment, or before the first import).

Two origins, as the Hub has: the Hub itself (`endpoint`) and the storage its LFS files are redirected to (`cdn`).
- `HEAD|GET /{repo}/resolve/{revision}/{path}`: a regular file answers 200 with its git blob id as ETag and
  `X-Repo-Commit`; an LFS file answers 302 to the storage origin with `X-Linked-Etag` (its sha256), `X-Linked-Size`
  and `X-Repo-Commit`, so the client takes the metadata from the redirect and downloads from storage without the
  token; a renamed repository answers 307 to its new name; refusals carry the Hub's `X-Error-Code` (RepoNotFound,
  RevisionNotFound, EntryNotFound, GatedRepo). Storage honours Range.
- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{revision}` (model info: sha, siblings, cardData,
  with sizes and LFS sha256 when `?blobs=true`), `GET /api/whoami-v2`, `GET /api/models/{repo}/auth-check[/write]`,
  `POST /api/repos/create`, `POST /api/models/{repo}/branch/{branch}`, `POST /api/validate-yaml`.
- Uploads: `POST /api/models/{repo}/preupload/{revision}` (regular or lfs, per the Hub's .gitattributes, size and
  binary content), `POST /{repo}.git/info/lfs/objects/batch` (the basic transfer: a PUT to storage, then verify),
  `POST /api/models/{repo}/commit/{revision}` (NDJSON: header, file, lfsFile, deletedFile).
- Xet: huggingface_hub >= 1.0 uploads LFS files through Xet whenever hf_xet is installed, without asking the server,
  so a server without Xet cannot decline it; clients of this server set HF_HUB_DISABLE_XET=1 (the client's own
  setting) and take the LFS path. A Xet token request is answered 501, saying so. Downloads use Xet only when a
  response carries `X-Xet-Hash`, which this server never sends.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from .hub_http import Handler, StorageHandler
from .hub_repos import KNOWN_LICENSES, HubFile, HubRepo, HubState, decode_commit_file, front_matter, is_lfs

REPO = r"(?P<repo>[^/]+/[^/]+)"
API_ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in (
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", rf"/api/models/{REPO}/auth-check(?P<write>/write)?", "auth_check"),
    ("GET", rf"/api/models/{REPO}/xet-(?:read|write)-token/.*", "xet"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>.+))?", "model_info"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", rf"/api/models/{REPO}/branch/(?P<branch>.+)", "create_branch"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>.+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<revision>.+)", "commit"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
)]


@dataclass
class Request:
    method: str
    path: str
    status: int = 0


class HubServer(HubState):
    """The loopback Hub: `endpoint` for HF_ENDPOINT, `add_user` for tokens, `create_repo`/`commit` to set repositories
    up directly, `requests` to see what the client asked."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), StorageHandler)
        for server in (self.hub, self.storage):
            server.daemon_threads = True
            server.zoo_hub = self  # type: ignore[attr-defined]
        self.threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for server in (self.hub, self.storage)]

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.hub.server_address[1]

    @property
    def cdn(self) -> str:
        return "http://127.0.0.1:%d" % self.storage.server_address[1]

    def start(self) -> HubServer:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self.hub, self.storage):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def publish(self, repo_id: str, files: dict[str, bytes], **options) -> HubRepo:
        """A repository holding `files` on main (created if needed)."""
        repo = self.find(repo_id) or self.create_repo(repo_id, **options)
        self.commit(repo, files, "set up by the test")
        return repo

    def hits(self, method: str, fragment: str) -> int:
        """Requests of `method` whose path contains `fragment`."""
        with self.lock:
            return sum(1 for r in self.requests if r.method == method and fragment in r.path)

    def log(self, method: str, path: str) -> Request:
        record = Request(method, path)
        with self.lock:
            self.requests.append(record)
        return record


class _HubHandler(Handler):
    def do_HEAD(self) -> None:
        self.route("GET")

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def route(self, method: str) -> None:
        parts = urlsplit(self.path)
        record = self.state.log(self.command, parts.path)
        self.query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.user = self.state.user(self.headers.get("Authorization"))
        self.payload = self.body() if method == "POST" else b""  # read whatever the answer: keep-alive needs it
        for verb, pattern, name in API_ROUTES:
            match = pattern.fullmatch(parts.path)
            if verb == method and match:
                record.status = getattr(self, name)(**{k: unquote(v) for k, v in match.groupdict().items() if v})
                return
        record.status = self.refuse(404, None, f"no route {self.command} {parts.path}")

    def readable(self, repo_id: str) -> HubRepo | int:
        """The repository when this user may read it; else the refusal already sent."""
        if self.user is None and self.headers.get("Authorization"):
            return self.refuse(401, None, "Invalid credentials in Authorization header")
        repo = self.state.find(repo_id)
        if repo is None or not self.state.can_read(repo, self.user):
            return self.refuse(401 if self.user is None else 404, "RepoNotFound", "Repository not found")
        if repo.gated and (self.user is None or self.user.name not in repo.allowed):
            return self.refuse(401 if self.user is None else 403, "GatedRepo",
                               "Access to this model is restricted: you must be authenticated and accept its "
                               "conditions")
        return repo

    def writable(self, repo_id: str) -> HubRepo | int:
        repo = self.readable(repo_id)
        if isinstance(repo, int):
            return repo
        if not self.state.can_write(repo, self.user):
            return self.refuse(403, None, "You don't have the rights to write to this repository")
        return repo

    def whoami(self) -> int:
        if self.user is None:
            return self.refuse(401, None, "Invalid credentials in Authorization header")
        return self.json(200, {"type": "user", "name": self.user.name, "fullname": self.user.name,
                               "orgs": [{"type": "org", "name": org, "roleInOrg": role}
                                        for org, role in self.user.orgs.items()],
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "test", "role": self.user.role}}})

    def auth_check(self, repo: str, write: str | None = None) -> int:
        found = self.writable(repo) if write else self.readable(repo)
        return found if isinstance(found, int) else self.json(200, {"ok": True})

    def xet(self, repo: str) -> int:
        return self.refuse(501, None, "this Hub has no Xet storage: set HF_HUB_DISABLE_XET=1 to upload through LFS")

    def resolve(self, repo: str, revision: str, path: str) -> int:
        if repo in self.state.renamed:
            return self.send(307, b"", {"Location": f"/{self.state.renamed[repo]}/resolve/{revision}/{path}"})
        found = self.readable(repo)
        if isinstance(found, int):
            return found
        commit = found.commit_at(revision)
        if commit is None:
            return self.refuse(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        item = commit.files.get(path)
        if item is None:
            return self.refuse(404, "EntryNotFound", f"{path} does not exist on \"{revision}\"",
                               {"X-Repo-Commit": commit.oid})
        if item.lfs:
            return self.send(302, b"", {"Location": f"{self.state.cdn}/lfs/{item.sha256}?signed=1",
                                        "ETag": f'"{item.sha256}"', "X-Linked-Etag": f'"{item.sha256}"',
                                        "X-Linked-Size": str(len(item.data)), "X-Repo-Commit": commit.oid},
                             content_type="text/plain")
        return self.send(200, item.data, {"ETag": f'"{item.oid}"', "X-Repo-Commit": commit.oid,
                                          "Accept-Ranges": "bytes"}, content_type="application/octet-stream")

    def model_info(self, repo: str, revision: str | None = None) -> int:
        found = self.readable(repo)
        if isinstance(found, int):
            return found
        commit = found.commit_at(revision)
        if commit is None:
            return self.refuse(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = self.query.get("blobs") == "true"
        siblings = [{"rfilename": path, **({"size": len(item.data), "blobId": item.oid} if blobs else {}),
                     **({"lfs": {"sha256": item.sha256, "size": len(item.data), "pointerSize": 134}}
                        if blobs and item.lfs else {})} for path, item in sorted(commit.files.items())]
        info = {"_id": commit.oid[:24], "id": found.repo_id, "modelId": found.repo_id, "author": found.owner,
                "sha": commit.oid, "private": found.private, "gated": "auto" if found.gated else False,
                "disabled": False, "tags": [], "siblings": siblings,
                "lastModified": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")}
        card = commit.files.get("README.md")
        if card is not None:
            info["cardData"] = front_matter(card.data.decode())
        return self.json(200, info)

    def create_repo(self) -> int:
        payload = json.loads(self.payload or b"{}")
        if self.user is None:
            return self.refuse(401, None, "Invalid credentials in Authorization header")
        namespace = payload.get("organization") or self.user.name
        repo_id = f"{namespace}/{payload['name']}"
        if not self.state.can_create_in(namespace, self.user):
            return self.refuse(403, None, f"You don't have the rights to create a model under the namespace "
                                          f"\"{namespace}\"")
        if self.state.find(repo_id) is not None:
            return self.refuse(409, None, "You already created this model repo", {"X-Repo-Url": repo_id})
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        self.state.create_repo(repo_id, private=private)
        return self.json(200, {"url": f"{self.state.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def create_branch(self, repo: str, branch: str) -> int:
        found = self.writable(repo)
        if isinstance(found, int):
            return found
        start = json.loads(self.payload or b"{}").get("startingPoint") or "main"
        if branch in found.branches:
            return self.refuse(409, None, f"Reference already exists: refs/heads/{branch}")
        found.branches[branch] = found.branches.get(start, start)
        return self.json(200, {})

    def validate_yaml(self) -> int:
        content = json.loads(self.payload or b"{}").get("content", "")
        try:
            metadata = front_matter(content)
        except yaml.YAMLError as error:
            return self.json(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
        license_id = metadata.get("license")
        if license_id is not None and license_id not in KNOWN_LICENSES:
            return self.json(400, {"errors": [{"message": f"\"license\" must be one of the Hub's licenses, got "
                                                          f"{license_id!r}"}]})
        if license_id == "other" and not metadata.get("license_name"):
            return self.json(400, {"errors": [{"message": "\"license_name\" is required when license is other"}]})
        return self.json(200, {"warnings": []})

    def preupload(self, repo: str, revision: str) -> int:
        found = self.writable(repo)
        if isinstance(found, int):
            return found
        commit = found.commit_at(revision) or found.commit_at("main")
        files = []
        for item in json.loads(self.payload)["files"]:
            sample = base64.b64decode(item["sample"])
            existing = commit.files.get(item["path"]) if commit else None
            files.append({"path": item["path"], "uploadMode": "lfs" if is_lfs(item["path"], item["size"], sample)
                          else "regular", "shouldIgnore": False, "oid": existing.oid if existing else None})
        return self.json(200, {"files": files, "commitOid": commit.oid if commit else None})

    def lfs_batch(self, repo: str) -> int:
        found = self.writable(repo)
        if isinstance(found, int):
            return found
        payload = json.loads(self.payload)
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.state.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.state.cdn}/upload/{item['oid']}?size={item['size']}", "header": {}},
                    "verify": {"href": f"{self.state.endpoint}/{repo}.git/info/lfs/objects/verify", "header": {}}}
            objects.append(entry)
        return self.send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                         content_type="application/vnd.git-lfs+json")

    def lfs_verify(self, repo: str) -> int:
        payload = json.loads(self.payload)
        stored = self.state.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            return self.refuse(404, None, f"object {payload['oid']} was not uploaded")
        return self.json(200, {"success": True})

    def commit(self, repo: str, revision: str) -> int:
        found = self.writable(repo)
        if isinstance(found, int):
            return found
        lines = [json.loads(line) for line in self.payload.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files: dict[str, HubFile | bytes] = {}
        deleted = []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = HubFile(decode_commit_file(value), lfs=False)
            elif key == "lfsFile":
                data = self.state.lfs_objects.get(value["oid"])
                if data is None:
                    return self.refuse(422, None, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = HubFile(data, lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        if revision not in found.branches:
            return self.refuse(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        made = self.state.commit(found, files, header.get("summary", ""), branch=revision, deleted=tuple(deleted))
        return self.json(200, {"success": True, "commitOid": made.oid, "hookOutput": "", "pullRequestUrl": None,
                               "commitUrl": f"{self.state.endpoint}/{repo}/commit/{made.oid}"})


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A started loopback Hub, stopped after the test."""
    with HubServer() as server:
        yield server


__all__ = ["HubServer", "hub_server"]
