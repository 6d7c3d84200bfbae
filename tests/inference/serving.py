"""Starting `catsdogs serve` for a test on 127.0.0.1 (a free port), and talking HTTP to it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
REAL_PHOTOS = ROOT.parent / "shared" / "data" / "PetImages-dev"
START_TIMEOUT_S = 120


def serve_extra_or_skip() -> None:
    """Skip without the serve extra, except under CI=true (.ci/run installs it), where that is a failure."""
    import importlib.util

    import pytest

    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        why = f"needs the serve extra ({', '.join(missing)} missing): pip install -e '.[dev]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the serve tests cannot run: it {why}")
        pytest.skip(why)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int
    log: list[str] = field(default_factory=list)  # what it wrote on stderr

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                connection: http.client.HTTPConnection | None = None) -> Answer:
        """One request (on `connection`, kept open, when given); the answer whatever its status."""
        own = connection is None
        connection = connection or self.connect()
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": content_type} if content_type else {})
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            if own:
                connection.close()


@contextmanager
def running_server(*args: str | Path) -> Iterator[Server]:
    """`catsdogs serve ARGS --port 0` in a child process (as nice as this one) until the block ends, then SIGTERM."""
    command = [sys.executable, "-m", "catsdogs", "serve", *map(str, args), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def drain() -> None:  # read stderr to the end, so that the pipe never fills and stops the server
        for line in process.stderr:
            log.append(line.rstrip("\n"))
            match = re.search(r"^open http://([\d.]+):(\d+)/", line)
            if match:
                address[:] = match.groups()
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        found.wait(START_TIMEOUT_S)
        assert address, f"the server did not start: {log}"
        server = Server(process, address[0], int(address[1]), log)
        wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)


def wait_until_healthy(server: Server, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.request("GET", "/health").status == 200:
                return
        except OSError:
            pass
        assert server.process.poll() is None, f"the server stopped: {server.log}"
        assert time.monotonic() < deadline, "the server did not answer /health"
        time.sleep(0.2)


def multipart(files: list[tuple[str, bytes]], boundary: str = "catsdogs-test-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body with one `files` field per (name, bytes), and its content type."""
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-pixel PNG whose header claims `side` x `side` pixels: what a decompression bomb shows a decoder."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = side.to_bytes(4, "big") * 2
    data[start + 17:start + 21] = zlib.crc32(bytes(data[start:start + 17])).to_bytes(4, "big")
    return bytes(data)


def rss_kib(pid: int) -> int:
    """A process's resident memory, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def real_or_fixture_photo(fixture_photos: Path) -> Path:
    """A real photo from ../shared/data/PetImages-dev when it is there, else the first fixture photo."""
    candidates = sorted((REAL_PHOTOS / "Dog").glob("*.jpg"))[:1] if REAL_PHOTOS.is_dir() else []
    return candidates[0] if candidates else sorted(fixture_photos.rglob("*.jpg"))[0]
