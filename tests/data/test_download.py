"""Tests for catsdogs.data.download against a local HTTP server serving a small generated zip."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.data.download import DownloadResult, download_petimages
from catsdogs.errors import CatsdogsError

ZIP_NAME = "kagglecatsanddogs_5340.zip"


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


# Laid out like the real archive: class folders under PetImages/, licence and readme at the top.
MEMBERS = {
    "PetImages/Cat/1.jpg": _jpeg((200, 50, 50)),
    "PetImages/Cat/2.jpg": _jpeg((180, 60, 40)),
    "PetImages/Dog/1.jpg": _jpeg((50, 50, 200)),
    "CDLA-Permissive-2.0.pdf": b"%PDF-1.4 licence",
    "readme[1].txt": b"Cats and dogs readme",
}


def _make_zip(members: dict[str, bytes], extra: Sequence[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> bytes:
    buffer = io.BytesIO()
    # ZIP_STORED keeps member bytes verbatim, which the corrupt-member test relies on.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("PetImages/"), b"")
        for name, data in members.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return buffer.getvalue()


PAYLOAD = _make_zip(MEMBERS)


@dataclass
class Served:
    """What the handler serves and what it saw; shared with the server thread."""

    url: str = ""
    payload: bytes = PAYLOAD
    drop_after: int | None = None  # first request only: close the socket after this many body bytes
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)  # the Range header of each request
    sent: list[int] = field(default_factory=list)  # body bytes written for each request


class Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        served = self.served
        if self.path != f"/{ZIP_NAME}":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        served.ranges.append(header)
        first_request = len(served.ranges) == 1
        size = len(served.payload)
        start = 0
        if header and not served.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                served.sent.append(0)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        body = served.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        dropping = first_request and served.drop_after is not None
        if dropping:
            body = body[: served.drop_after]
        # Recorded before writing: once the last byte is out the client may already be asserting.
        served.sent.append(len(body))
        if dropping:
            self.wfile.write(body)
            self.wfile.flush()
            # Close the socket with the promised Content-Length unmet: the client sees a dropped link.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)


@pytest.fixture
def server():
    served = Served()
    handler = type("BoundHandler", (Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ZIP_NAME}"
    yield served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ZIP_NAME}"


def _fetch(server: Served, dest: Path, **kwargs) -> DownloadResult:
    kwargs.setdefault("expected_size", len(server.payload))
    kwargs.setdefault("sha256", None)
    kwargs.setdefault("progress", False)
    return download_petimages(dest, url=server.url, timeout=5.0, **kwargs)


def _assert_extracted(dest: Path) -> None:
    target = dest / "PetImages"
    for name, data in MEMBERS.items():
        inside = name.removeprefix("PetImages/")
        assert (target / inside).read_bytes() == data, inside
    assert sorted(p.name for p in (target / "Cat").iterdir()) == ["1.jpg", "2.jpg"]
    # No staging folder or .part is left beside the results.
    assert sorted(p.name for p in dest.iterdir()) == ["PetImages", ZIP_NAME]


def test_full_download_extracts_images_and_keeps_verified_zip(server, tmp_path):
    result = _fetch(server, tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert result == DownloadResult(tmp_path / "PetImages", tmp_path / ZIP_NAME, True, True)
    assert server.ranges == [None]
    assert (tmp_path / ZIP_NAME).read_bytes() == PAYLOAD
    _assert_extracted(tmp_path)


def test_dropped_connection_keeps_part_and_resumes_with_range(server, tmp_path):
    half = len(PAYLOAD) // 2
    server.drop_after = half
    with pytest.raises(CatsdogsError, match="it resumes where it stopped") as excinfo:
        _fetch(server, tmp_path, progress=True)
    message = str(excinfo.value)
    part = tmp_path / f"{ZIP_NAME}.part"
    assert server.url in message and f"({half} bytes kept in {part})" in message and "\n" not in message
    assert part.read_bytes() == PAYLOAD[:half]
    assert not (tmp_path / "PetImages").exists()

    result = _fetch(server, tmp_path, progress=True)
    assert server.ranges == [None, f"bytes={half}-"]
    assert server.sent == [half, len(PAYLOAD) - half]  # only the missing bytes came the second time
    assert result.downloaded and result.extracted
    assert (tmp_path / ZIP_NAME).read_bytes() == PAYLOAD
    _assert_extracted(tmp_path)


def test_server_ignoring_range_restarts_the_part(server, tmp_path):
    server.ignore_range = True
    (tmp_path / f"{ZIP_NAME}.part").write_bytes(b"x" * 100)  # stale bytes that must not survive
    _fetch(server, tmp_path)
    assert server.ranges == ["bytes=100-"]
    assert server.sent == [len(PAYLOAD)]
    assert (tmp_path / ZIP_NAME).read_bytes() == PAYLOAD
    _assert_extracted(tmp_path)


def test_complete_part_answered_416_is_used_as_is(server, tmp_path):
    (tmp_path / f"{ZIP_NAME}.part").write_bytes(PAYLOAD)
    # Without an expected size the client must ask; the server says there is nothing left.
    result = _fetch(server, tmp_path, expected_size=None)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"]
    assert result.extracted
    _assert_extracted(tmp_path)


@pytest.mark.parametrize("delta", [-10, 10])
def test_size_mismatch_reports_sizes_and_keeps_the_part(server, tmp_path, delta):
    expected = len(PAYLOAD) + delta
    with pytest.raises(CatsdogsError) as excinfo:
        _fetch(server, tmp_path, expected_size=expected)
    message = str(excinfo.value)
    assert f"is {len(PAYLOAD)} bytes but should be {expected}" in message
    assert ("resume" in message) == (delta > 0)  # too short: resume; too long: delete and retry
    assert (tmp_path / f"{ZIP_NAME}.part").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ZIP_NAME}.part"]


def test_existing_user_zip_of_wrong_size_is_reported_not_deleted(tmp_path):
    user_zip = tmp_path / ZIP_NAME
    user_zip.write_bytes(b"not the archive")
    with pytest.raises(CatsdogsError, match="move .* away"):
        download_petimages(tmp_path, url=_closed_port_url(), expected_size=len(PAYLOAD), sha256=None,
                           progress=False)
    assert user_zip.read_bytes() == b"not the archive"


def test_sha256_mismatch_is_refused(server, tmp_path):
    with pytest.raises(CatsdogsError, match="SHA-256") as excinfo:
        _fetch(server, tmp_path, sha256="0" * 64)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(excinfo.value)
    assert not (tmp_path / ZIP_NAME).exists()
    assert not (tmp_path / "PetImages").exists()


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("PetImages/Cat/link.jpg")
    info.external_attr = 0o120777 << 16  # S_IFLNK: unzip would create a link to the data below
    return info


@pytest.mark.parametrize(
    "member, data",
    [
        ("../evil.txt", b"evil"),
        ("/abs.txt", b"evil"),
        ("PetImages/../../evil.txt", b"evil"),
        ("PetImages\\..\\..\\evil.txt", b"evil"),
        (_symlink_member(), b"../../../outside"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "backslash-dotdot", "symlink"],
)
def test_malicious_member_is_refused_and_nothing_is_written(server, tmp_path, member, data):
    server.payload = _make_zip(MEMBERS, extra=[(member, data)])
    dest = tmp_path / "dest"
    with pytest.raises(CatsdogsError, match="unsafe member"):
        _fetch(server, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert sorted(p.name for p in dest.iterdir()) == [ZIP_NAME]  # no PetImages, no staging folder
    assert not Path("/abs.txt").exists()


def test_failed_extraction_leaves_no_half_written_petimages(server, tmp_path):
    members = dict(MEMBERS, **{"PetImages/Dog/2.jpg": b"DOG-TWO-BYTES"})
    payload = _make_zip(members)
    server.payload = payload.replace(b"DOG-TWO-BYTES", b"DOG-TWO-BYTEZ")  # CRC no longer matches
    with pytest.raises(CatsdogsError, match="not a valid zip"):
        _fetch(server, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ZIP_NAME]


def test_connection_refused_is_one_clear_line(tmp_path):
    url = _closed_port_url()
    with pytest.raises(CatsdogsError) as excinfo:
        download_petimages(tmp_path, url=url, progress=False, timeout=5.0)
    message = str(excinfo.value)
    assert message.startswith(f"download of {url} failed (")
    assert "Connection refused" in message and "Errno" not in message and "resumes" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_http_404_names_the_status(server, tmp_path):
    with pytest.raises(CatsdogsError, match="HTTP 404"):
        download_petimages(tmp_path, url=server.url + ".missing", progress=False, timeout=5.0)


def test_url_that_is_not_http_is_named(tmp_path):
    with pytest.raises(CatsdogsError, match="cannot download 'nowhere.zip': only http"):
        download_petimages(tmp_path, url="nowhere.zip", progress=False)


def test_server_that_never_answers_times_out(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts into the backlog but never replies
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{ZIP_NAME}"
        with pytest.raises(CatsdogsError, match="timed out"):
            download_petimages(tmp_path, url=url, progress=False, timeout=0.3)


def test_existing_complete_petimages_is_a_no_op(tmp_path):
    for class_dir in ("Cat", "Dog"):
        (tmp_path / "PetImages" / class_dir).mkdir(parents=True)
        (tmp_path / "PetImages" / class_dir / "1.jpg").write_bytes(b"jpeg")
    # A closed port proves no network access is attempted.
    result = download_petimages(tmp_path, url=_closed_port_url(), progress=False)
    assert result == DownloadResult(tmp_path / "PetImages", None, False, False)


def test_incomplete_existing_petimages_is_reported_not_touched(tmp_path):
    (tmp_path / "PetImages" / "Cat").mkdir(parents=True)
    (tmp_path / "PetImages" / "Cat" / "1.jpg").write_bytes(b"jpeg")
    with pytest.raises(CatsdogsError, match="lacks non-empty Cat and Dog"):
        download_petimages(tmp_path, url=_closed_port_url(), progress=False)
    assert (tmp_path / "PetImages" / "Cat" / "1.jpg").read_bytes() == b"jpeg"


def test_kept_zip_is_extracted_without_network(tmp_path):
    (tmp_path / ZIP_NAME).write_bytes(PAYLOAD)
    result = download_petimages(tmp_path, url=_closed_port_url(), expected_size=len(PAYLOAD),
                                sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert result == DownloadResult(tmp_path / "PetImages", tmp_path / ZIP_NAME, False, True)
    _assert_extracted(tmp_path)


def test_a_failed_download_removes_the_folders_it_made(tmp_path):
    with pytest.raises(CatsdogsError, match="Connection refused"):
        download_petimages(tmp_path / "new" / "deeper", url=_closed_port_url(), progress=False, timeout=5.0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # the user's own folder stays, even empty
    with pytest.raises(CatsdogsError, match="Connection refused"):
        download_petimages(tmp_path / "mine" / "new", url=_closed_port_url(), progress=False, timeout=5.0)
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"] and list((tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize("received", [0, len(PAYLOAD) // 2])
def test_a_dropped_download_into_a_new_folder_keeps_only_bytes_to_resume(server, tmp_path, received):
    server.drop_after = received
    dest = tmp_path / "new"
    with pytest.raises(CatsdogsError, match=f"connection closed after {received} of"):
        _fetch(server, dest)
    if received:
        assert [p.name for p in dest.iterdir()] == [f"{ZIP_NAME}.part"]
        _fetch(server, dest)
        _assert_extracted(dest)
    else:  # an empty .part holds nothing to resume
        assert list(tmp_path.iterdir()) == []
