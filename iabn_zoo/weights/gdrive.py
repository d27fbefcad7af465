"""Google Drive links and pages: share links become direct downloads, and the HTML Drive answers with is classified.

Pages are recognised by their content, never by host name, so the same code handles Drive and a test server.
The `/file/d/<ID>/view` and `/uc?id=<ID>` shapes are Drive's own and are rewritten on any host; the generic
`/open?id=<ID>` shape only on Drive hosts.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

DRIVE_HOSTS = ("drive.google.com", "docs.google.com")
FILE_PATH = re.compile(r"^/file/d/(?P<id>[A-Za-z0-9_-]+)(/(view|edit|preview))?/?$")
QUOTA_MARKERS = ("too many users have viewed or downloaded this file recently", "quota exceeded")
PERMISSION_MARKERS = ("you need access", "you need permission", "request access", "accounts.google.com/servicelogin",
                      "sign in - google accounts")
CONFIRM_IN_HREF = re.compile(r"[?&]confirm=([0-9A-Za-z_-]+)")


def file_id(url: str) -> str | None:
    """The Drive file id a share or download link refers to, None for any other link."""
    parts = urlsplit(url)
    match = FILE_PATH.match(parts.path)
    if match:
        return match.group("id")
    query = parse_qs(parts.query)
    drive_host = parts.hostname in DRIVE_HOSTS
    if "id" in query and (parts.path == "/uc" or (drive_host and parts.path == "/open")):
        return query["id"][0]
    return None


def direct_url(url: str) -> str:
    """The direct-download form (`/uc?export=download&id=ID` on the same host) of a Drive link; others unchanged."""
    identifier = file_id(url)
    if identifier is None:
        return url
    parts = urlsplit(url)
    query = urlencode({"export": "download", "id": identifier})
    return urlunsplit((parts.scheme, parts.netloc, "/uc", query, ""))


@dataclass
class DrivePage:
    """What an HTML answer means: `kind` is form, token, quota, permission or unknown; `next_url` to follow."""

    kind: str
    next_url: str | None = None
    title: str = ""


class _PageScan(HTMLParser):
    """Collects the title, the download form (action + hidden inputs) and the links of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.form_action: str | None = None
        self.form_fields: dict[str, str] = {}
        self.links: list[str] = []
        self._in_title = False
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "form" and self.form_action is None and "download" in (values.get("id", "") + values.get(
                "action", "")):
            self.form_action, self._in_form = values.get("action", ""), True
        elif tag == "input" and self._in_form and values.get("type") == "hidden" and values.get("name"):
            self.form_fields[values["name"]] = values.get("value", "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "form":
            self._in_form = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def classify_page(page: str, url: str, cookies: dict[str, str] | None = None) -> DrivePage:
    """Classify an HTML answer received from `url` where a file was expected; `cookies` are the session's."""
    scan = _PageScan()
    scan.feed(page)
    text = html.unescape(page).lower()
    title = scan.title.strip()
    if any(marker in text for marker in QUOTA_MARKERS):
        return DrivePage("quota", title=title)
    target = _followable(url, scan.form_action)
    if target is not None:
        return DrivePage("form", f"{target}{'&' if '?' in target else '?'}{urlencode(scan.form_fields)}", title)
    token = _confirm_token(scan.links, cookies or {})
    if token is not None:
        next_url = _followable(url, _with_confirm(url, scan.links, token))
        if next_url is not None:
            return DrivePage("token", next_url, title)
    if any(marker in text for marker in PERMISSION_MARKERS):
        return DrivePage("permission", title=title)
    return DrivePage("unknown", title=title)


def _followable(base: str, link: str | None) -> str | None:
    """`link` resolved against `base` when it is a well-formed http(s) URL, else None: a page must never lead the
    downloader to file://, javascript: or a malformed address."""
    if link is None:
        return None
    try:
        target = urljoin(base, link)
        parts = urlsplit(target)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # malformed address or port
        return None
    return target if valid else None


def _confirm_token(links: list[str], cookies: dict[str, str]) -> str | None:
    for href in links:
        match = CONFIRM_IN_HREF.search(href)
        if match:
            return match.group(1)
    for name, value in cookies.items():
        if name.startswith("download_warning"):
            return value
    return None


def _with_confirm(url: str, links: list[str], token: str) -> str:
    for href in links:
        if CONFIRM_IN_HREF.search(href):
            return href
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    query["confirm"] = token
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
