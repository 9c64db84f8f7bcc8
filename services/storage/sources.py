"""Image sources the storage service fetches itself, through opendal's sync API.

``http(s)://host/path``, ``fs:///path`` (this host), ``s3://bucket/key`` (credentials from
the service's environment) and ``NAME:path`` for an operator named in the service config
(``sources: {images: {scheme: s3, bucket: ..., endpoint: ...}}``), so credentials stay on
the service. Every call here blocks: it runs in the writer thread, never on the trio loop.
Errors are one line naming the URI with user info, query strings and configured secrets
redacted.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from labctl.errors import BadArguments, DriverError


class SourceError(DriverError):
    """A URI could not be read: not found, access denied, unreachable."""


URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
NAMED_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9_-]*):(?!//)(.+)$")


def is_uri(text: str, operators: dict[str, Any] | None = None) -> bool:
    """Whether ``text`` names a remote source rather than a local path."""
    if URI_RE.match(text):
        return True
    m = NAMED_RE.match(text)
    return m is not None and (operators is None or m.group(1) in operators)


def redact(uri: str) -> str:
    """The URI without user info or query string (presigned signatures, tokens)."""
    if not URI_RE.match(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    if parts.username or parts.password:
        host = "***@" + host
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


class RemoteSource:
    """One opened URI: ``size`` (None if unknown) and ``read(n)``."""

    def __init__(self, uri: str, operators: dict[str, dict[str, Any]]) -> None:
        import opendal

        self.uri = uri
        self.shown = redact(uri)
        self._secrets = [
            str(v) for op in operators.values() for k, v in op.items() if k != "scheme" and v
        ]
        scheme, options, self.path = self._resolve(uri, operators)
        try:
            self.op = opendal.Operator(scheme, **options)
            self.size: int | None = int(self.op.stat(self.path).content_length)
            self._file = self.op.open(self.path, "rb")
        except Exception as exc:
            raise self._error(exc) from None

    @staticmethod
    def _resolve(uri: str, operators: dict[str, dict[str, Any]]) -> tuple[str, dict[str, str], str]:
        m = NAMED_RE.match(uri)
        if m and not URI_RE.match(uri):
            name, path = m.groups()
            op = operators.get(name)
            if op is None:
                known = ", ".join(sorted(operators)) or "none configured"
                raise BadArguments(f"unknown source operator {name!r} (known: {known})")
            options = {k: str(v) for k, v in op.items() if k != "scheme"}
            return str(op["scheme"]), options, path
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            host = parts.netloc.rpartition("@")[2]
            options = {"endpoint": f"{scheme}://{host}"}
            if parts.username:  # user:password@ in the URI: HTTP basic auth
                options["username"] = parts.username
                options["password"] = parts.password or ""
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            return "http", options, path.lstrip("/")
        if scheme == "fs":
            if parts.netloc:
                raise BadArguments(
                    f"fs URIs name a path on the service's host: fs:///path, not {uri}"
                )
            return "fs", {"root": "/"}, parts.path.lstrip("/")
        if scheme == "s3":
            import os

            options = {"bucket": parts.netloc, "region": os.environ.get("AWS_REGION", "us-east-1")}
            if os.environ.get("AWS_ENDPOINT_URL"):
                options["endpoint"] = os.environ["AWS_ENDPOINT_URL"]
            return "s3", options, parts.path.lstrip("/")
        raise BadArguments(
            f"unsupported source scheme {scheme!r} in {redact(uri)} "
            "(http, https, fs, s3, or NAME:path for a configured operator)"
        )

    def _error(self, exc: Exception) -> SourceError:
        kind = type(exc).__name__
        if kind == "NotFound" or "NotFound" in str(exc)[:40]:
            what = "not found"
        elif kind == "PermissionDenied" or "PermissionDenied" in str(exc)[:40]:
            what = "access denied"
        else:
            first = str(exc).splitlines()[0] if str(exc) else kind
            for secret in self._secrets:
                first = first.replace(secret, "***")
            what = f"could not be read ({first[:160]})"
        return SourceError(f"{self.shown}: {what}", {"uri": self.shown})

    def read(self, n: int) -> bytes:
        try:
            return self._file.read(n)  # type: ignore[no-any-return]
        except Exception as exc:
            raise self._error(exc) from None

    def exists(self, path: str) -> bool:
        try:
            self.op.stat(path)
            return True
        except Exception:
            return False

    def read_all(self, path: str, limit: int = 16 << 20) -> bytes:
        try:
            data = self.op.read(path)
        except Exception as exc:
            raise self._error(exc) from None
        if len(data) > limit:
            raise SourceError(f"{self.shown}: {path} is larger than {limit} bytes")
        return bytes(data)

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass


def bmap_candidates(path: str) -> list[str]:
    """Where a bmap beside an image may be: IMAGE.bmap, then with compression suffixes
    stripped one at a time (img.wic.zst -> img.wic.zst.bmap, img.wic.bmap)."""
    out = [path + ".bmap"]
    stem = path
    while True:
        base, dot, ext = stem.rpartition(".")
        if not dot or "/" in ext or ext.lower() not in ("gz", "xz", "bz2", "zst", "zstd"):
            break
        stem = base
        out.append(stem + ".bmap")
    return out
