"""Real servers on 127.0.0.1 that a test (or benchmarks/remote.py) starts and stops itself.

- :class:`Nginx`: Debian's nginx (``apt-get install nginx-light``; ``.ci/run`` installs it) serving a folder as
  static files, with Range support (nginx's own), in the foreground as a child process, every request in its
  access log (method, path, status, body bytes, Range header): :meth:`Nginx.requests`.
- :class:`FaultProxy`: a threaded Python HTTP/1.1 proxy (``http.server``) in front of an upstream server,
  forwarding GET and HEAD with their Range header, that adds a latency to every request and injects faults on
  request: a status (5xx), a body cut short, a stall; :meth:`FaultProxy.stop` / :meth:`FaultProxy.start` take
  it down and bring it back on the same port (a server that stops).
- :class:`MotoS3`: moto's S3-compatible server (``python -m moto.server``, ``pip install "moto[server]"``).

Every wait here is bounded (a deadline); a server that does not come up fails the test, naming its log.
"""
from __future__ import annotations

import dataclasses
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
START_TIMEOUT_S = 20.0


def nginx_binary() -> str | None:
    for name in NGINX_CANDIDATES:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


NGINX_CONF = """
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format t '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {dir}/access.log t;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    sendfile on;
    keepalive_requests 100000;
    types {{ application/x-tar tar; application/x-hdf5 h5; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """``nginx -g 'daemon off;'`` serving ``root`` on 127.0.0.1 (a context manager)."""

    def __init__(self, root: str | os.PathLike, workdir: str | os.PathLike):
        self.binary = nginx_binary()
        if self.binary is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light; .ci/run does it)")
        self.root, self.dir = Path(root).resolve(), Path(workdir).resolve()
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        user = "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""  # workers read the test's files
        for _ in range(5):  # a port taken between free_port() and nginx's bind: try another
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(user=user, dir=self.dir, port=self.port, root=self.root))
            log = self.dir / "stderr.log"
            self.proc = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(conf), "-e",
                                          str(self.dir / "error.log"), "-g", "daemon off;"],
                                         stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
            try:
                wait_for_port(self.port, self.proc, "nginx", self.dir / "error.log")
                return self
            except RuntimeError:
                stop_process(self.proc)
                if "Address already in use" not in (self.dir / "error.log").read_text(errors="replace"):
                    raise
        raise RuntimeError("nginx: no free port found in 5 tries")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests(self) -> list[dict]:
        """Every request so far (nginx writes its access log line as the response ends)."""
        out = []
        path = self.dir / "access.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            method, uri, status, nbytes, rng = line.split(" ", 4)
            out.append({"method": method, "path": uri, "status": int(status), "bytes": int(nbytes),
                        "range": None if rng == '"-"' else rng.strip('"')})
        return out


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """:class:`FaultProxy`'s request handler (``proxy``: set on the subclass each start makes)."""

    proxy: FaultProxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written (no 40 ms wait for a delayed ACK)

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        with self.proxy._lock:
            self.proxy._connections.add(self.connection)

    def finish(self):
        with self.proxy._lock:
            self.proxy._connections.discard(self.connection)
        super().finish()

    def do_HEAD(self):
        self._forward(head=True)

    def do_GET(self):
        self._forward(head=False)

    def _forward(self, head: bool) -> None:
        entry = self.proxy._arrived(self.path)
        if self.proxy.latency_s:
            time.sleep(self.proxy.latency_s)
        fault = self.proxy._take_fault(self.path)
        if fault is not None and fault.status is not None:
            body = f"injected {fault.status}\n".encode()
            self.send_response(fault.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            entry[1:] = [fault.status, len(body)]
            return
        conn = http.client.HTTPConnection(self.proxy.upstream_host, self.proxy.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "if-range")}
        conn.request("HEAD" if head else "GET", self.path, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        entry[1] = resp.status
        for k, v in resp.getheaders():
            if k.lower() in ("content-length", "content-range", "accept-ranges", "content-type", "last-modified",
                             "etag"):
                self.send_header(k, v)
        self.end_headers()
        sent = 0
        try:
            sent = 0 if head else self._body(resp, fault)
        finally:
            conn.close()
            entry[2] = sent

    def _body(self, resp, fault: Fault | None) -> int:
        """Stream the upstream body, as ``fault`` says (stall, cut short, one byte flipped); the bytes sent."""
        if fault is not None and fault.stall_s is not None:
            self.proxy._stopping.wait(fault.stall_s)
            self.close_connection = True
            return 0
        cut = fault.cut_after if fault is not None else None
        flip = fault.flip_byte if fault is not None else None
        sent = 0
        while chunk := resp.read(1 << 16):
            if flip is not None and sent <= flip < sent + len(chunk):
                k = flip - sent
                chunk = chunk[:k] + bytes([chunk[k] ^ 0xFF]) + chunk[k + 1:]
            if cut is not None and sent + len(chunk) > cut:
                self.wfile.write(chunk[:cut - sent])
                self.close_connection = True  # the body ends short of its Content-Length
                return cut
            self.wfile.write(chunk)
            sent += len(chunk)
        return sent


@dataclasses.dataclass
class Fault:
    """What the proxy does to the next ``times`` requests whose path contains ``match``."""

    match: str
    times: int
    status: int | None = None  # answer this status (no upstream request)
    cut_after: int | None = None  # send the headers, then only this many body bytes, then close
    stall_s: float | None = None  # send the headers, then nothing for this long, then close
    flip_byte: int | None = None  # invert this byte of the body (same length: a corrupt transfer)


class FaultProxy:
    """A proxy to ``upstream`` (``http://127.0.0.1:PORT``) on 127.0.0.1 adding ``latency_s`` to every request
    and the faults of :meth:`inject`; counts requests and body bytes it sent, per path."""

    def __init__(self, upstream: str, latency_s: float = 0.0):
        self.upstream_host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream_port = int(port)
        self.latency_s = latency_s
        self.port = 0
        self.faults: list[Fault] = []
        self.log: list[list] = []  # [path, status, body bytes sent] per request from its arrival (status 0: unanswered)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, match: str, times: int = 1, **what) -> Fault:
        fault = Fault(match, times, **what)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in path and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _arrived(self, path: str) -> list:
        entry = [path, 0, 0]
        with self._lock:
            self.log.append(entry)
        return entry

    def start(self) -> FaultProxy:
        Handler = type("Handler", (_ProxyHandler,), {"proxy": self})

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True
            request_queue_size = 128  # the listen backlog: 5 drops the SYNs of a burst of connections (1 s retries)

            def handle_error(self, request, client_address):  # a client or a stop cut the connection: expected
                if not isinstance(sys.exc_info()[1], OSError):
                    super().handle_error(request, client_address)

        self._stopping.clear()
        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (new connections are refused), close the open ones and cut the stalls short; the port is
        kept for :meth:`start`."""
        if self._server is not None:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            with self._lock:  # and the kept-alive connections: the clients see the server gone
                for conn in self._connections:
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests(self, match: str = "") -> list[tuple[str, int, int]]:
        """(path, status, body bytes sent) of every request so far whose path contains ``match``."""
        with self._lock:
            return [tuple(r) for r in self.log if match in r[0]]


class MotoS3:
    """moto's S3 server on 127.0.0.1 (``python -m moto.server``), a context manager; ``env``: what a client needs
    (fake credentials, region, ``AWS_ENDPOINT_URL_S3``)."""

    def __init__(self, workdir: str | os.PathLike):
        self.dir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": self.url}

    def start(self) -> MotoS3:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.dir / "moto.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, "moto.server", log)
        return self

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
