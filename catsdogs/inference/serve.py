"""`catsdogs serve`: check the extra is installed, bind the address, and run the app under uvicorn until stopped.

FastAPI and uvicorn, with a batcher of catsdogs' own (batcher.py), rather than LitServe or Ray
Serve: both of those are built on FastAPI and uvicorn themselves and add worker processes of
their own around the model; one process whose model thread runs batches while its event loop
keeps answering is all a CPU or one GPU needs, and the batcher is a hundred lines.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

from catsdogs.errors import CatsdogsError
from catsdogs.inference.serve_settings import ServeSettings
from catsdogs.inference.served import ServedModel, load_served

EXTRA = 'pip install "catsdogs[serve]"'
EVERY_INTERFACE = ("0.0.0.0", "::", "")
GRACE_S = 30  # how long a stop waits for the requests in flight


def require_serving() -> None:
    """One line naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    for module in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            raise CatsdogsError(f"catsdogs serve needs {module}, which catsdogs installs as an extra: {EXTRA}") \
                from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket at host:port (port 0: a free one); OSError (address in use, ...) as the system says."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                        flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in EVERY_INTERFACE:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(run_dir: Path | None, *, model_file: Path | None = None, device: str = "auto", host: str = "127.0.0.1",
          port: int = 8000, settings: ServeSettings | None = None,
          on_ready: Callable[[ServedModel, str], None] = lambda served, address: None) -> None:
    """Load the model, bind `host:port`, call `on_ready(model, address)`, and serve until SIGINT or SIGTERM.

    A stop closes the listening socket, lets the requests in flight finish (up to GRACE_S seconds),
    answers every photo already queued, then returns; uvicorn then raises the same signal again,
    so the process ends as a stopped program does (KeyboardInterrupt for Ctrl-C).
    """
    require_serving()
    import uvicorn

    from catsdogs.inference.serveapp import create_app

    served = load_served(run_dir, model_file, device)
    app = create_app(served, settings or ServeSettings())
    sock = bind(host, port)
    try:
        on_ready(served, address_of(sock))
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_S)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
