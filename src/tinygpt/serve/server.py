"""Running the application: uvicorn on a socket we bind, in the foreground or a thread.

Owns: binding the listening socket (so that a busy port is one clear error, not a log line
and an exit), running uvicorn in the foreground (`run`, what `tinygpt serve` calls) or in a
background thread (`start`, for tests, notebooks and benchmarks: it waits, with a time
limit, until the server answers, and `stop()` always ends it). Knows nothing about the
routes (`tinygpt.serve.app`).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from tinygpt.core.errors import TinyGPTError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TinyGPTError(
            f"cannot resolve host {host!r} ({exc.strerror}); give an address"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise TinyGPTError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def _config(app: Any, log_level: str) -> Any:
    import uvicorn

    # timeout_graceful_shutdown: streams still open at Ctrl-C are cut after this long.
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3)


def run(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Serve `app` on host:port (or on `sock`, already bound) until interrupted (Ctrl-C /
    SIGTERM)."""
    import uvicorn

    sock = sock or bind(host, port)
    try:
        uvicorn.Server(_config(app, log_level)).run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A server running in a background thread; `url` is its base (`http://host:port`)."""

    url: str
    host: str
    port: int
    _server: Any
    _thread: threading.Thread
    _sock: socket.socket

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    wait: float = 30.0,
) -> RunningServer:
    """Start `app` in a daemon thread on host:port (0: a free port) and return once it
    accepts requests; raise TinyGPTError if it has not within `wait` seconds."""
    import uvicorn

    sock = bind(host, port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, log_level))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tinygpt-serve", daemon=True
    )
    thread.start()
    end = time.monotonic() + wait
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise TinyGPTError(f"the server did not start on {host}:{port} within {wait:g} s")
        time.sleep(0.01)
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{shown}:{port}", host, port, server, thread, sock)
