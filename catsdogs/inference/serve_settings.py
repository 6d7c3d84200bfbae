"""What `catsdogs serve` accepts and how it batches: one home for the defaults its options show."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchSettings:
    """How photos are gathered: at most `max_batch` per model call, the first of them waiting at most
    `max_wait_ms`, and at most `max_queue` photos waiting in all. max_batch 1 turns batching off."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError(f"{self}: max_batch and max_queue must be at least 1, max_wait_ms at least 0")


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
