"""What `catsdogs serve` accepts and how it batches: one home for the defaults its options show."""

from __future__ import annotations

from dataclasses import dataclass, field

from catsdogs.inference.batcher import BatchSettings


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how it batches (the options of `catsdogs serve`): an upload of at most
    `max_upload_mb`, at most `max_files` photos per request, each of at most `max_pixels` pixels, and a
    busy answer asking to retry after `retry_after_s`."""

    batch: BatchSettings = field(default_factory=BatchSettings)
    max_upload_mb: float = 20.0
    max_files: int = 16
    # 40 MP lets a 12 MP phone photo (4032x3024) and a 24 MP camera's through, and bounds what one decoding
    # thread holds: decoding a 40 MP PNG took 382 MiB at its peak (benchmarks/decode_peak.py, docs/serve.md).
    max_pixels: int = 40_000_000
    retry_after_s: int = 1
