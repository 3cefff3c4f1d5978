"""Where a feature set's bytes are when they are not on this disk (``train.source``), and how they are fetched.

Sources, by the value of ``train.source`` (:func:`source_problem` checks it):

- ``local``: ``index.h5`` and the shards on this disk; nothing here is used.
- ``dvc`` or ``dvc:<remote>``: the project's DVC remote (the default one, or the one named), resolved by DVC
  itself: the repository path of the index (``features/index.h5``) and of each shard beside it are looked up
  with ``DVCFileSystem`` (the hashes ``dvc.lock`` or a ``.dvc`` file records; the folder's ``.dir`` listing is
  read from the remote when the local cache lacks it), and read from the remote's object store
  (``files/md5/xx/...``) through a filesystem built from the remote's own config (``endpointurl``,
  credentials, ...), so any remote DVC supports works. Nothing is written to the DVC cache or the workspace.
- a URL prefix ``<protocol>://...`` (any fsspec protocol: ``http(s)://``, ``s3://``, ``gs://``, ...):
  ``<prefix>/index.h5`` and ``<prefix>/<shard name>``, the layout of the ``features/`` folder. S3 options
  come from the usual AWS sources (``AWS_ENDPOINT_URL_S3`` for an S3-compatible server).

Fetching (:class:`Fetcher`): a file whole (one GET streamed into a temporary file beside its destination, its
size and hash checked before it is renamed into place: nothing partial ever has the final name), or a byte
range (one ranged GET, its length and content checked by the caller's check). Each attempt has a timeout on
connecting and on every read (``train.fetch_timeout_s``): a stalled server fails the attempt. A failed attempt
(refused connection, stall, 5xx, truncated or corrupt body) is retried ``train.fetch_retries`` times with
exponential backoff (:data:`BACKOFF_S` doubling, at most :data:`BACKOFF_MAX_S`), then one
:class:`ShardFetchError` names the file, its URL and the last error. A missing (404) or forbidden object fails
at once. Every request is counted (:attr:`Fetcher.stats`: requests, bytes received, failed attempts).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.shards import sha256_file

LOCAL = "local"
DVC = "dvc"
BACKOFF_S = 0.5  # first retry after this many seconds, then twice as long each time
BACKOFF_MAX_S = 8.0
URL = re.compile(r"^([a-z][a-z0-9+.-]*)://.+")
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)  # not retried


class ShardFetchError(OSError):
    """A file of a remote feature set could not be fetched: the message names it, its URL and the last error."""


def source_problem(value: str) -> str | None:
    """Why ``value`` is no valid ``train.source``, or None."""
    if value in (LOCAL, DVC) or (value.startswith(f"{DVC}:") and len(value) > len(DVC) + 1):
        return None
    m = URL.match(value)
    if m is None:
        return (f"must be local | dvc | dvc:<remote name> | a URL prefix <protocol>://... (http, https, s3, gs, ...), "
                f"got {value!r}")
    import fsspec

    if m.group(1) not in fsspec.available_protocols():
        return f"unknown protocol {m.group(1)!r} in {value!r}; fsspec knows {', '.join(fsspec.available_protocols())}"
    return None


@dataclasses.dataclass(frozen=True)
class Location:
    """One remote file: the fsspec filesystem that reads it, its path there, its URL (for messages) and, when
    the source records one, its MD5 (DVC's hash)."""

    fs: Any
    path: str
    url: str
    md5: str | None = None


def _with_timeouts(protocol: str, options: dict, timeout_s: float) -> dict:
    """fsspec options with a connect and read timeout for the protocols whose clients take one (HTTP: aiohttp;
    S3: botocore, whose own retries are turned off: :class:`Fetcher` retries)."""
    options = dict(options)
    if protocol in ("http", "https"):
        import aiohttp

        client = dict(options.get("client_kwargs") or {})
        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        options["client_kwargs"] = client
    elif protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        config.update(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
        options["config_kwargs"] = config
    return options


class UrlSource:
    """``<prefix>/index.h5`` and ``<prefix>/<shard name>`` through fsspec."""

    def __init__(self, prefix: str, index_name: str, timeout_s: float):
        import fsspec

        self.prefix = prefix.rstrip("/")
        self.index_name = index_name
        protocol = URL.match(prefix).group(1)
        self.fs = fsspec.filesystem(protocol, skip_instance_cache=True, **_with_timeouts(protocol, {}, timeout_s))

    def describe(self) -> str:
        return self.prefix

    def _at(self, name: str) -> Location:
        url = f"{self.prefix}/{name}"
        return Location(self.fs, self.fs._strip_protocol(url), url)  # http: the URL itself; s3: bucket/key

    def index(self) -> Location:
        return self._at(self.index_name)

    def shard(self, name: str) -> Location:
        return self._at(name)


class DvcSource:
    """The DVC remote's objects of the repository files ``<folder>/index.h5`` and ``<folder>/<shard name>``."""

    def __init__(self, index_path: str | os.PathLike, remote: str | None, timeout_s: float):
        from dvc.repo import Repo

        start = Path(index_path).absolute().parent
        while not start.is_dir():  # the folder itself may be absent: the clone never pulled it
            start = start.parent
        root = Path(Repo.find_root(str(start))).resolve()
        rel = Path(os.path.normpath(Path(index_path).absolute())).relative_to(root)
        self.index_name, self.folder = rel.name, rel.parent.as_posix()
        with Repo(str(root)) as repo:
            try:
                odb = repo.cloud.get_remote_odb(name=remote, command="train")
            except Exception as err:  # noqa: BLE001  DVC's own errors (no remote, unknown name) are no ValueError
                raise ValueError(f"train.source: {DVC}{':' + remote if remote else ''}: "
                                 f"{' '.join(str(err).split())}") from None  # one line
            self.remote_name = remote or repo.config["core"].get("remote")
            self.md5 = self._hashes(repo, rel)
        self.odb_fs = odb.fs
        self.oid_to_path = odb.oid_to_path
        self.root_url = odb.fs.unstrip_protocol(odb.path)
        inner = odb.fs.fs  # the fsspec filesystem DVC built from the remote's config: a fresh one, with timeouts
        protocol = inner.protocol if isinstance(inner.protocol, str) else inner.protocol[0]
        self.fs = type(inner)(**_with_timeouts(protocol, {**odb.fs.fs_args, "skip_instance_cache": True}, timeout_s))

    def _hashes(self, repo, rel: Path) -> dict[str, str]:
        """file name -> MD5 of every DVC-tracked file in the index's folder."""
        fs = repo.dvcfs
        folder = rel.parent.as_posix()
        try:
            entries = fs.ls(folder, detail=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder}: not in this repository's DVC outputs (dvc.lock or a .dvc file); "
                                    f"run `dvc repro extract` and `dvc push` where the features were made") from None
        md5 = {}
        for e in entries:
            value = (e.get("dvc_info") or {}).get("md5") or e.get("md5")  # the hash DVC recorded: the remote's
            if e.get("type") == "file" and value:
                md5[Path(e["name"]).name] = value
        if rel.name not in md5:
            raise FileNotFoundError(f"{rel.as_posix()}: not tracked by DVC in this repository (dvc.lock or a .dvc "
                                    f"file lists no such output): train.source dvc reads tracked features only")
        return md5

    def describe(self) -> str:
        return f"DVC remote {self.remote_name!r} ({self.root_url})"

    def _at(self, name: str) -> Location:
        if name not in self.md5:
            raise FileNotFoundError(f"{self.folder}/{name}: no DVC hash for it (dvc.lock lists another version of "
                                    f"{self.folder}): git pull the dvc.lock that matches the remote")
        path = self.oid_to_path(self.md5[name])
        return Location(self.fs, path, self.odb_fs.unstrip_protocol(path), self.md5[name])

    def index(self) -> Location:
        return self._at(self.index_name)

    def shard(self, name: str) -> Location:
        return self._at(name)


def open_source(source: str, index_path: str | os.PathLike, timeout_s: float) -> UrlSource | DvcSource:
    """The source named by ``train.source`` (not ``local``) for the feature set whose index is ``index_path``."""
    problem = source_problem(source)
    if problem is not None or source == LOCAL:
        raise ValueError(f"train.source: {problem or 'local is no remote source'}")
    if source == DVC or source.startswith(f"{DVC}:"):
        return DvcSource(index_path, source.partition(":")[2] or None, timeout_s)
    return UrlSource(source, Path(index_path).name, timeout_s)


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Fetcher:
    """Whole files and byte ranges with bounded retries (see the module docstring); thread-safe."""

    def __init__(self, *, retries: int, backoff_s: float = BACKOFF_S):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries, self.backoff_s = int(retries), float(backoff_s)
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "bytes": 0, "failed_attempts": 0}

    def _count(self, nbytes: int, failed: bool) -> None:
        with self._lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += int(nbytes)
            self.stats["failed_attempts"] += int(failed)

    def _retrying(self, what: str, url: str, attempt: Callable[[], Any]) -> Any:
        """``attempt()`` until it returns, at most 1 + retries times; then one ShardFetchError."""
        last: BaseException | None = None
        for n in range(self.retries + 1):
            if n:
                time.sleep(min(self.backoff_s * 2 ** (n - 1), BACKOFF_MAX_S))
            try:
                return attempt()
            except PERMANENT as err:
                raise ShardFetchError(f"{what}: {url}: {type(err).__name__}: {err} (not retried: the object is "
                                      f"missing or not readable there)") from None
            except Exception as err:  # noqa: BLE001  any transport or server error: retried, bounded
                last = err
        detail = str(last) or "no answer within train.fetch_timeout_s"  # a timeout says nothing itself
        raise ShardFetchError(f"{what}: fetching {url} failed {self.retries + 1} times, the last with "
                              f"{type(last).__name__}: {detail}; rerun to resume once the server is back") from None

    def get_file(self, loc: Location, dest: Path, *, what: str, size: int | None = None,
                 sha256: str | None = None) -> int:
        """``loc`` into ``dest`` (renamed into place only when its size, SHA-256 and the location's MD5 match
        what is given); returns its bytes."""
        dest = Path(dest)
        tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-{threading.get_ident()}")

        def attempt() -> int:
            ok, got = False, 0
            try:
                loc.fs.get_file(loc.path, str(tmp))
                got = tmp.stat().st_size
                if size is not None and got != size:
                    raise ValueError(f"truncated or wrong body: {got} bytes, the index says {size}")
                if sha256 is not None and sha256_file(tmp) != sha256:
                    raise ValueError("SHA-256 differs from the one in index.h5 (corrupt in transit, or the server "
                                     "holds another extraction)")
                if loc.md5 is not None and md5_file(tmp) != loc.md5:
                    raise ValueError(f"MD5 differs from DVC's {loc.md5}")
                os.replace(tmp, dest)
                ok = True
                return got
            finally:
                self._count(got if ok or not tmp.exists() else tmp.stat().st_size, failed=not ok)
                tmp.unlink(missing_ok=True)

        return self._retrying(what, loc.url, attempt)

    def get_range(self, loc: Location, start: int, length: int, *, what: str,
                  check: Callable[[bytes], None] | None = None) -> bytes:
        """Bytes ``[start, start + length)`` of ``loc``: exactly ``length`` of them, accepted by ``check``
        (which raises ValueError on content it refuses)."""

        def attempt() -> bytes:
            data = b""
            try:
                data = loc.fs.cat_file(loc.path, start=start, end=start + length)
                if len(data) != length:
                    raise ValueError(f"asked for {length} bytes at {start}, got {len(data)} (a truncated body, or "
                                     f"a server that ignores Range)")
                if check is not None:
                    check(data)
            except BaseException:
                self._count(len(data), failed=True)
                raise
            self._count(len(data), failed=False)
            return data

        return self._retrying(what, loc.url, attempt)
