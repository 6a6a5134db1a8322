"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so two apps in one
process (tests) never share counters."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters, gauges and histograms of the serving path (names ``safe_*``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("safe_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("safe_request_errors", "Refused or failed requests, by error code", ["code"], registry=r)
        self.rows = Counter("safe_rows", "Answered chat requests, by audio: used (audio path ran), skipped "
                            "(had a clip, answered by the base), none (no clip)", ["audio"], registry=r)
        self.audio_rate = Gauge("safe_audio_use_rate", "Share of requests with a clip whose audio path ran", registry=r)
        self.encoder_rows = Counter("safe_encoder_rows", "Clips run through the audio encoder (cache misses "
                                    "of rows that used audio)", registry=r)
        self.cache_hits = Counter("safe_clip_cache_hits", "Clip embeddings served from the cache", registry=r)
        self.cache_misses = Counter("safe_clip_cache_misses", "Clip embeddings not in the cache", registry=r)
        self.cache_size = Gauge("safe_clip_cache_entries", "Clip embeddings held in the cache", registry=r)
        self.cache_bytes = Gauge("safe_clip_cache_bytes", "Memory the cached clip embeddings hold", registry=r)
        self.latency = Histogram("safe_request_seconds", "Chat request latency, body read to response",
                                 buckets=_LATENCY, registry=r)
        self.queue = Histogram("safe_queue_seconds", "Time a request waited for its batch to start",
                               buckets=_LATENCY, registry=r)
        self.stage = Histogram("safe_batch_stage_seconds", "Time per batch in each part: state (policy state "
                               "and decision), encoder, generate", ["stage"], buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("safe_batch_size", "Requests per batch (one policy pass and one generate)",
                                    buckets=_BATCH, registry=r)
        self._with_clip = 0
        self._used = 0

    def count_rows(self, used: list[bool], with_clip: list[bool]) -> None:
        for u, c in zip(used, with_clip):
            self.rows.labels("used" if u else ("skipped" if c else "none")).inc()
        self._with_clip += sum(with_clip)
        self._used += sum(u and c for u, c in zip(used, with_clip))
        if self._with_clip:
            self.audio_rate.set(self._used / self._with_clip)

    def text(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
