"""`catsdogs serve`: the API's answers, every bad input refused in one line, the page in Chromium, a graceful stop."""

from __future__ import annotations

import io
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsdogs.inference.export import export_run
from catsdogs.inference.predict import load_trained, predict_photos
from tests.browser import chromium_or_skip
from tests.helpers import invoke
from tests.inference.serving import (bomb_png, multipart, real_or_fixture_photo, running_server,
                                     serve_extra_or_skip)


@pytest.fixture(scope="module")
def server(tiny_run):
    serve_extra_or_skip()
    run, _ = tiny_run
    with running_server(run) as server:
        yield server


@pytest.fixture(scope="module")
def photos(tiny_run) -> list[Path]:
    return sorted((tiny_run[1] / "test").rglob("*.jpg"))


def test_predict_answers_what_catsdogs_predict_says_raw_and_multipart(server, tiny_run, photos) -> None:
    expected = predict_photos(load_trained(tiny_run[0], device="cpu"), photos, progress=False)
    raw = [server.request("POST", "/predict", photo.read_bytes(), "image/jpeg") for photo in photos[:2]]
    body, kind = multipart([(photo.name, photo.read_bytes()) for photo in photos])
    form = server.request("POST", "/predict", body, kind)
    assert [answer.status for answer in raw] == [200, 200] and form.status == 200
    answered = [answer.json()["photos"][0] for answer in raw] + form.json()["photos"]
    assert [item["name"] for item in form.json()["photos"]] == [photo.name for photo in photos]
    probs = np.array([[item["probabilities"][name] for name in expected.classes] for item in answered])
    assert np.allclose(probs, np.concatenate([expected.probs[:2], expected.probs]), atol=1e-5)
    assert [item["class"] for item in answered] == expected.predicted[:2] + expected.predicted
    assert all(item["ms"] > 0 for item in answered)


@pytest.mark.parametrize("what, body, content_type, status, says", [
    ("not an image", b"this is a text file, not a photo", "image/jpeg", 400, "not an image"),
    ("a truncated JPEG", None, "image/jpeg", 400, "truncated"),
    ("an empty body", b"", "image/jpeg", 400, "empty body"),
    ("a decompression bomb", bomb_png(), "image/png", 413, "too many pixels"),
    ("an upload over the limit", b"\xff" * 21_000_001, "image/jpeg", 413, "over the limit of 20 MB"),
    ("a wrong content type", b"hello", "text/plain", 415, "text/plain is not a photo"),
    ("too many files", None, "multipart", 413, "at most 16 photos"),
    ("a form without files", b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 400, "no file"),
])
def test_bad_input_gets_a_one_line_4xx_and_the_server_goes_on(server, photos, what, body, content_type, status,
                                                               says) -> None:
    if what == "a truncated JPEG":
        body = photos[0].read_bytes()[:-200]
    if what == "too many files":
        body, content_type = multipart([(f"{i}.jpg", photos[0].read_bytes()) for i in range(17)])
    answer = server.request("POST", "/predict", body, content_type)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert says in error and "\n" not in error and list(answer.json()) == ["error"]
    good = server.request("POST", "/predict", photos[0].read_bytes(), "image/jpeg")
    assert good.status == 200 and good.json()["photos"][0]["class"] in ("Cat", "Dog")
    assert server.process.poll() is None


def test_one_bad_file_among_several_is_named_and_the_server_goes_on(server, photos) -> None:
    body, kind = multipart([(photos[0].name, photos[0].read_bytes()), ("notes.jpg", b"not a photo"),
                            (photos[1].name, photos[1].read_bytes())])
    answer = server.request("POST", "/predict", body, kind)
    assert answer.status == 400
    assert answer.json() == {"error": "photo 'notes.jpg' cannot be read: not an image"}
    good = server.request("POST", "/predict", photos[2].read_bytes(), "image/jpeg")
    assert good.status == 200 and good.json()["photos"][0]["class"] in ("Cat", "Dog")


def test_an_exported_file_alone_classifies_and_says_heat_maps_need_a_checkpoint(tiny_run, photos,
                                                                                 tmp_path: Path) -> None:
    serve_extra_or_skip()
    model_file = tmp_path / "model.torchscript"
    export_run(shutil.copytree(tiny_run[0], tmp_path / "run"), "torchscript", out=model_file, verify_n=2,
               log=lambda _: None)
    expected = predict_photos(load_trained(tiny_run[0], device="cpu"), photos[:2], progress=False)
    with running_server("--model", model_file) as server:
        model = server.request("GET", "/model").json()
        assert (model["served_from"], model["engine"], model["run"]) == (str(model_file), "torchscript", None)
        assert model["heat_maps"] is False and model["classes"] == ["Cat", "Dog"] and model["image_size"] == 96
        body, kind = multipart([(photo.name, photo.read_bytes()) for photo in photos[:2]])
        answered = server.request("POST", "/predict", body, kind).json()["photos"]
        probs = np.array([[item["probabilities"][name] for name in expected.classes] for item in answered])
        assert np.allclose(probs, expected.probs, atol=1e-5)
        heat = server.request("POST", "/explain", photos[0].read_bytes(), "image/jpeg")
        assert heat.status == 409
        assert heat.json() == {"error": "heat maps need a run's checkpoint: serve a run, not an exported file alone"}


def test_a_photo_over_max_pixels_is_refused_from_its_header_and_one_at_it_is_classified(tiny_run) -> None:
    serve_extra_or_skip()

    def jpeg(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="JPEG")
        return buffer.getvalue()

    with running_server(tiny_run[0], "--max-pixels", "10000") as server:
        over = server.request("POST", "/predict", jpeg(101, 100), "image/jpeg")
        assert over.status == 413, over.body
        assert over.json() == {"error": "the photo cannot be read: too many pixels: 101x100 is 10,100, over this "
                                        "server's limit of 10,000"}
        at = server.request("POST", "/predict", jpeg(100, 100), "image/jpeg")
        assert at.status == 200 and at.json()["photos"][0]["class"] in ("Cat", "Dog")
        assert server.request("GET", "/model").json()["max_pixels"] == 10_000


def test_max_pixels_above_catsdogs_decoding_bound_is_refused() -> None:
    serve_extra_or_skip()
    result = invoke("serve", "--max-pixels", "250000001", "--port", "0")
    assert result.exit_code == 2
    assert result.output == "Error: --max-pixels 250,000,001 is over catsdogs' decoding bound of 250,000,000\n"


def test_explain_gives_a_png_heat_map_at_the_model_s_size(server, tiny_run, photos) -> None:
    answer = server.request("POST", "/explain", photos[0].read_bytes(), "image/jpeg")
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(answer.body)).size == (96, 96)
    expected = predict_photos(load_trained(tiny_run[0], device="cpu"), photos[:1], progress=False)
    assert answer.headers["x-class"] == expected.predicted[0]
    assert float(answer.headers["x-probability"]) == pytest.approx(float(expected.probs[0].max()), abs=1e-5)
    body, kind = multipart([(photo.name, photo.read_bytes()) for photo in photos[:2]])
    assert server.request("POST", "/explain", body, kind).status == 400


def test_model_health_openapi_and_unknown_paths(server, tiny_run) -> None:
    model = server.request("GET", "/model").json()
    assert model["classes"] == ["Cat", "Dog"] and model["image_size"] == 96 and model["run"] == str(tiny_run[0])
    assert model["engine"] == "PyTorch on cpu" and model["verification"] is None and model["heat_maps"] is True
    assert model["batching"] == {"max_batch": 32, "max_wait_ms": 5.0, "max_queue": 256}
    assert server.request("GET", "/health").json()["status"] == "ok"
    paths = server.request("GET", "/openapi.json").json()["paths"]
    assert {"/predict", "/explain", "/model", "/health"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    missing = server.request("GET", "/no-such-page")
    assert missing.status == 404 and list(missing.json()) == ["error"]
    assert server.request("GET", "/predict").status == 405
    assert server.log[0].startswith("serving ") and "Ctrl-C stops the server" in server.log[1]


def test_the_page_classifies_a_chosen_photo_and_shows_its_heat_map(server, photos, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium_or_skip()
    photo = real_or_fixture_photo(photos[0].parent.parent)
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(server.address)
            assert "test accuracy" in page.inner_text("body") and "Cat, Dog" in page.inner_text("body")
            page.set_input_files("#files", str(photo))
            label = page.wait_for_selector(".label", timeout=60_000).inner_text()
            # Polled from here: wait_for_function re-evaluates its string in the page, which the page's CSP forbids.
            deadline = time.monotonic() + 60
            while not page.evaluate("document.querySelector('.result img')?.naturalWidth > 0"):
                assert time.monotonic() < deadline, "the heat map never loaded"
                page.wait_for_timeout(100)
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert label.split()[0] in ("Cat", "Dog") and label.endswith("%")
    assert errors == []
    assert all(url.startswith((server.address, "blob:", "data:")) for url in requests), requests


def test_sigterm_answers_the_requests_in_flight_then_stops(tiny_run, photos) -> None:
    serve_extra_or_skip()
    with running_server(tiny_run[0], "--max-wait-ms", "3000", "--max-batch", "64") as server:
        answers: list[int] = []

        def ask(photo: Path) -> None:
            answers.append(server.request("POST", "/predict", photo.read_bytes(), "image/jpeg").status)

        clients = [threading.Thread(target=ask, args=(photo,)) for photo in photos[:4]]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while server.request("GET", "/health").json()["waiting"] < 4:  # all four wait in the batcher
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(60)
        assert answers == [200, 200, 200, 200]
        assert server.process.wait(60) == -signal.SIGTERM
        with pytest.raises(OSError):
            server.request("GET", "/health")


def test_without_the_extra_serve_says_what_to_install(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    result = invoke("serve", "--port", "0")
    assert result.exit_code == 1
    assert result.output == ('Error: catsdogs serve needs uvicorn, which catsdogs installs as an extra: '
                             'pip install "catsdogs[serve]"\n')
