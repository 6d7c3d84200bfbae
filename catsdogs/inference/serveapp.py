"""The HTTP side of `catsdogs serve`: FastAPI routes over the batcher, every bad input answered in one JSON line."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from catsdogs import __version__
from catsdogs.cpus import usable_cpus
from catsdogs.inference.batcher import Batcher, QueueFull
from catsdogs.inference.serve_settings import ServeSettings
from catsdogs.inference.served import BadPhoto, ServedModel, TooManyPixels, decode_photo
from catsdogs.inference.servepage import POLICY, render_page

MB = 1_000_000
PHOTO_TYPES = ("image/", "application/octet-stream")  # a raw body of one photo
MULTIPART = "multipart/form-data"
BODY_DOC = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    MULTIPART: {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
log = logging.getLogger("catsdogs.serve")


class Refused(Exception):
    """A request answered with `status` and {"error": message}: bad input, or too much load."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def one_line(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes `limit` bytes, before reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the upload is {int(declared) / MB:.1f} MB, over the limit of {limit / MB:g} MB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"the upload is over the limit of {limit / MB:g} MB")
    return bytes(body)


async def read_photos(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo a request carries: a raw body of one, or the files of a multipart form."""
    limit = int(settings.max_upload_mb * MB)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != MULTIPART and not media.startswith(PHOTO_TYPES):
        raise Refused(415, f"content type {media or '(none)'} is not a photo: send image/*, "
                           f"application/octet-stream, or {MULTIPART} with one file per photo")
    body = await read_body(request, limit)
    if not body:
        raise Refused(400, "empty body: send a photo")
    if media != MULTIPART:
        return [("photo", body)]

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=settings.max_files, max_fields=settings.max_files,
                                                         max_part_size=limit)
    except (MultiPartException, HTTPException) as error:  # Starlette turns the first into the second in an app
        message = str(getattr(error, "detail", error))
        too_many = "too many" in message.lower()
        raise Refused(413 if too_many else 400, f"{message} (at most {settings.max_files} photos per request)"
                      if too_many else f"unreadable multipart form: {message}") from None
    try:
        files = [(item.filename or name, await item.read()) for name, item in form.multi_items()
                 if isinstance(item, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise Refused(400, "the form holds no file: send each photo as a file field")
    return files


def create_app(served: ServedModel, settings: ServeSettings) -> FastAPI:
    """The application: the page at /, POST /predict and /explain, GET /model and /health, /openapi.json."""
    size = served.image_size
    info = {**served.info, "batching": asdict(settings.batch), "max_upload_mb": settings.max_upload_mb,
            "max_files": settings.max_files, "max_pixels": settings.max_pixels}
    parts: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        parts["model"] = ThreadPoolExecutor(1, thread_name_prefix="catsdogs-model")  # one model call at a time
        parts["decode"] = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="catsdogs-decode")
        parts["batcher"] = batcher = Batcher(served.probabilities, settings.batch, parts["model"])
        parts["explaining"] = 0
        batcher.start()
        try:
            yield
        finally:  # the server has answered every request in flight by now
            await batcher.close()
            for pool in (parts["model"], parts["decode"]):
                pool.shutdown()

    app = FastAPI(title="catsdogs", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Classifies photos as {' or '.join(served.classes)} with a trained catsdogs model.")

    async def decode(files: list[tuple[str, bytes]]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(parts["decode"], decode_photo, data, size, settings.max_pixels)
                for _, data in files]
        images = await asyncio.gather(*jobs, return_exceptions=True)
        for (name, _), image in zip(files, images):
            if isinstance(image, BadPhoto):
                what = "the photo" if len(files) == 1 else f"photo {name!r}"
                raise Refused(413 if isinstance(image, TooManyPixels) else 400, f"{what} cannot be read: {image}")
            if isinstance(image, BaseException):
                raise image
        return images

    add_error_handlers(app)
    add_routes(app, served, settings, info, parts, decode)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as one line of JSON: refusals with their status, HTTP errors, a client gone, and the rest as 500."""
    @app.exception_handler(Refused)
    async def refused(_: Request, error: Refused) -> JSONResponse:
        return one_line(error.status, error.message, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return one_line(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def gone(_: Request, __: ClientDisconnect) -> JSONResponse:
        return one_line(400, "the client went away before sending the whole request")

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        log.exception("catsdogs serve: a request failed")
        return one_line(500, f"internal error: {type(error).__name__}: {error}")


def add_routes(app: FastAPI, served: ServedModel, settings: ServeSettings, info: dict[str, Any],
               parts: dict[str, Any], decode: Callable[[list[tuple[str, bytes]]], Awaitable[list[np.ndarray]]],
               ) -> None:
    """The page and the API's routes; `parts` holds the worker pools and the batcher that the app's lifespan starts."""
    page = render_page(info)
    busy = {"Retry-After": str(settings.retry_after_s)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": POLICY})

    @app.post("/predict", openapi_extra=BODY_DOC, summary="Classify one photo or several")
    async def predict(request: Request) -> dict[str, Any]:
        """Each photo's class, its probability, every class's probability and the milliseconds its request took."""
        start = time.perf_counter()
        files = await read_photos(request, settings)
        if len(files) > settings.max_files:
            raise Refused(413, f"{len(files)} photos in one request; at most {settings.max_files}")
        images = await decode(files)
        try:
            probs = await parts["batcher"].submit(images)
        except QueueFull as error:
            raise Refused(503, f"busy: {error}; try again shortly", busy) from None
        ms = 1000 * (time.perf_counter() - start)
        return {"photos": [{"name": name, "class": served.classes[int(row.argmax())], "probability": float(row.max()),
                            "probabilities": dict(zip(served.classes, map(float, row))), "ms": ms}
                           for (name, _), row in zip(files, probs)]}

    @app.post("/explain", openapi_extra=BODY_DOC, summary="Grad-CAM heat map of one photo, as a PNG",
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def explain(request: Request) -> Response:
        """The photo as the model sees it, with the evidence for its predicted class in colour over it."""
        if not served.info.get("heat_maps"):
            raise Refused(409, "heat maps need a run's checkpoint: serve a run, not an exported file alone")
        files = await read_photos(request, settings)
        if len(files) != 1:
            raise Refused(400, f"explain takes one photo per request, not {len(files)}")
        (image,) = await decode(files)
        if parts["explaining"] >= settings.batch.max_queue:
            raise Refused(503, "busy: too many heat maps are being made; try again shortly", busy)
        parts["explaining"] += 1
        try:
            png, best, probability = await asyncio.get_running_loop().run_in_executor(
                parts["model"], served.heat_map, image)
        finally:
            parts["explaining"] -= 1
        return Response(png, media_type="image/png",
                        headers={"X-Class": quote(served.classes[best]), "X-Probability": f"{probability:.6f}"})

    @app.get("/model", summary="What model is served")
    async def model() -> dict[str, Any]:
        """Classes, image size, where the model comes from, its test accuracy, its export's verification."""
        return info

    @app.get("/health", summary="Whether the server is up")
    async def health() -> dict[str, Any]:
        batcher = parts["batcher"]
        return {"status": "ok", "waiting": batcher.waiting, "batches": batcher.batches, "photos": batcher.photos}
