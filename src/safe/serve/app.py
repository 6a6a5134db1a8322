"""The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Guarantees: the model, processor and policy are loaded once (at start-up, in the lifespan, or given
ready by :func:`safe.stages.serve.serve`); every request the server refuses gets a 4xx whose JSON body
is OpenAI's error object naming the problem (malformed JSON, a wrong shape, bad base64, undecodable
audio or image, a clip over the limit, too many parts, an oversized body: 413, an unsupported
parameter, an unknown model: 404), and the server keeps serving; a 500 means a bug in the server, and
its batch-mates are retried alone so they still get answers (:class:`~safe.serve.batcher.DynamicBatcher`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from safe.processing.audio import AudioInputError
from safe.processing.images import ImageInputError
from safe.serve.batcher import BatcherFull, BatchInfo, DynamicBatcher
from safe.serve.clip_cache import ClipCache
from safe.serve.engine import Engine, RowResult
from safe.serve.limits import DRAIN_BYTES, check_json, check_prompt, check_prompt_chars
from safe.serve.media import Limits, Row, to_row
from safe.serve.metrics import CONTENT_TYPE, Metrics
from safe.serve.schemas import RequestError, parse_request

log = logging.getLogger("safe.serve")
INPUT_ERRORS: tuple[type[Exception], ...] = (AudioInputError, ImageInputError)
"""ValueErrors the model raises that name a problem of the request's media: answered 400, not logged."""
DISCONNECT_POLL_S = 0.25
RETRY_AFTER_S = 1
"""Seconds a client refused with 429 (the server busy, ``--max-queue``) is told to wait (``Retry-After``)."""


def load_engine(cfg, encoders: dict[str, str] | None = None) -> Engine:
    """The run of ``cfg`` (:class:`safe.stages.serve.ServeConfig`) loaded once, checked against
    ``cfg.certificate`` when given (:class:`~safe.models.certificate.CertificateError` on other weights);
    ``encoders``: the encoder folder of each other modality the run carries (``{"depth": DIR}``; default:
    ``cfg.depth_encoder`` when given, else the ones the run's saved processor names)."""
    if encoders is None and getattr(cfg, "depth_encoder", None):
        encoders = {"depth": cfg.depth_encoder}
    from safe.inference.pipeline import pipeline
    from safe.models.loading import parse_dtype

    pipe = pipeline(cfg.run_dir, cfg.base, cfg.audio, dtype=parse_dtype(cfg.dtype), device=cfg.device,
                    max_new_tokens=cfg.default_max_tokens, encoders=encoders)
    pipe.model.eval()
    if cfg.certificate:
        from safe.models.certificate import check_certificate

        cert = check_certificate(cfg.certificate, pipe.model)
        for lib, (then, now) in cert["library_changes"].items():
            log.warning("certificate %s was written with %s %s; this server runs %s", cfg.certificate, lib, then, now)
    return Engine(pipe, ClipCache(cfg.cache_clips, int(cfg.cache_mb * 1024 * 1024)), Metrics())


def limits_for(cfg, engine: Engine) -> Limits:
    window = engine.processor.front_end.window_seconds
    most = cfg.max_audio_seconds if cfg.max_audio_seconds is not None else (window or 30.0)
    return Limits(max_tokens=cfg.max_tokens, max_n=cfg.max_n, max_audio_seconds=float(most),
                  window_seconds=window, allow_local_media=cfg.allow_local_media,
                  default_max_tokens=cfg.default_max_tokens, max_messages=cfg.max_messages, max_parts=cfg.max_parts,
                  max_prompt_tokens=cfg.max_prompt_tokens, positions=engine.positions,
                  max_image_width=cfg.max_image_width, max_image_height=cfg.max_image_height,
                  max_audio_peak=cfg.max_audio_peak, max_audio_channels=cfg.max_audio_channels)


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _ServerBug(Exception):
    """A failure after the model answered: never the request's fault."""


class ClientGone(Exception):
    """The client disconnected before its answer was sent."""


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, within ``timeout`` seconds (408 past it), refused with 413 past ``limit`` bytes. An
    oversized body is read and dropped up to :data:`DRAIN_BYTES` more, so a client that writes its
    whole body before reading (urllib, curl) gets the 413 rather than a connection reset."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        if declared is not None and declared > limit + DRAIN_BYTES:
            return  # not worth draining: answer at once (the connection is closed after the 413)
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit + DRAIN_BYTES:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(f"the request body did not arrive within {timeout:g} s (--body-timeout-s)", status=408,
                           code="body_timeout") from None
    except ClientDisconnect:
        raise ClientGone() from None
    if (declared or 0) > limit or size > limit:
        raise RequestError(f"request body of {max(declared or 0, size)} bytes is over this server's limit of {limit} "
                           "bytes (--max-body-mb)", status=413, code="body_too_large")
    return b"".join(chunks)


def _prepare(body: bytes, cfg, eng: Engine, limits: Limits, decodes: threading.Semaphore) -> Row:
    """A body -> a checked, decoded :class:`Row` (on a worker thread: parsing, validation and decoding
    never hold up the event loop). :class:`RequestError` for anything refused."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"malformed JSON body ({type(err).__name__}: {err})"[:300], code="invalid_json") from None
    check_json(data, limits)
    req = parse_request(data)
    if req.model is not None and req.model != cfg.model_name:
        raise RequestError(f"model {req.model[:100]!r} is not served here; this server serves {cfg.model_name!r} "
                           "(GET /v1/models)", status=404, param="model", code="model_not_found")
    row = to_row(req, eng.processor.sampling_rate, limits, decodes)
    check_prompt_chars(row.question, limits)  # before tokenizing: its cost grows with the text, under a shared lock
    eng.check(row)
    check_prompt(eng.prompt_tokens(row), row.max_tokens, limits)
    return row


def _response(name: str, result: RowResult, info: BatchInfo, total: float) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": f, "logprobs": None}
               for i, (a, f) in enumerate(zip(result.answers, result.finish))]
    completion = sum(result.completion_tokens)
    timing = {"queue": round(info.queue_seconds * 1000, 3), **result.timing_ms, "total": round(total * 1000, 3)}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": result.prompt_tokens + completion},
            "safe": {"used_audio": result.used_audio, "audio_probability": result.audio_probability,
                     "modalities": result.modalities, **{f"used_{m}": u for m, u in result.used_other.items()},
                     "decided_by": result.decided_by, "policy": result.batch.get("policy"),
                     "policy_state": result.batch.get("policy_state"),
                     "encoder": {"ran": result.used_audio and result.cache_hit is False,
                                 "cache_hit": result.cache_hit},
                     "batch": {"id": info.id, "size": info.size, "row": info.row},
                     "timing_ms": timing}}


async def _answer(request: Request, row: Row):
    """The batcher's answer for ``row``; :class:`ClientGone` (and the queued row dropped, or its answer
    discarded when its batch already runs) as soon as the client disconnects."""
    task = asyncio.ensure_future(request.app.state.batcher.submit(row, row.key))
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()  # cancels the job's future: the batcher skips it
            raise ClientGone()


def create_app(cfg, engine: Engine | None = None) -> FastAPI:
    """The app for ``cfg`` (:class:`safe.stages.serve.ServeConfig`); ``engine``: an already loaded
    :class:`Engine` (else :func:`load_engine` runs in the lifespan, before the first request)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        eng = engine if engine is not None else await run_in_threadpool(load_engine, cfg)
        eng.cache.max_bytes = int(cfg.cache_mb * 1024 * 1024)
        if eng.metrics is None:
            eng.metrics = Metrics()
        batcher = DynamicBatcher(eng.run, cfg.max_batch, cfg.max_wait_ms, max_queued=cfg.max_queue)
        await batcher.start()
        app.state.engine, app.state.batcher, app.state.limits = eng, batcher, limits_for(cfg, eng)
        app.state.admitted = 0  # chat requests between admission and answer (event loop only: no lock)
        app.state.decodes = threading.BoundedSemaphore(cfg.max_decodes)
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="SAFE", summary="OpenAI-compatible chat completions with per-request audio decisions",
                  lifespan=lifespan)
    limit = int(cfg.max_body_mb * 1024 * 1024)

    def count(endpoint: str, status: int) -> None:
        app.state.engine.metrics.requests.labels(endpoint, str(status)).inc()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # the one error format, even for a bug
        err = RequestError(f"internal error ({type(exc).__name__})", status=500, code="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = RequestError(f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code,
                           code="not_found" if exc.status_code == 404 else "http_error")
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def busy(eng: Engine) -> JSONResponse:
        eng.metrics.errors.labels("rate_limit_exceeded").inc()
        count("chat", 429)
        err = RequestError(f"the server is busy: {cfg.max_queue} requests are being answered (--max-queue); retry "
                           f"in {RETRY_AFTER_S} s", status=429, code="rate_limit_exceeded")
        return JSONResponse(err.body(), status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state = request.app.state
        if state.admitted >= cfg.max_queue:  # before the body is read: a refused request costs nothing
            return busy(state.engine)
        state.admitted += 1
        try:
            return await answer_chat(request)
        finally:
            state.admitted -= 1

    async def answer_chat(request: Request):
        t0 = time.perf_counter()
        eng: Engine = request.app.state.engine
        try:
            body = await _read_body(request, limit, cfg.body_timeout_s)
            row = await run_in_threadpool(_prepare, body, cfg, eng, request.app.state.limits, request.app.state.decodes)
            result, info = await _answer(request, row)
            total = time.perf_counter() - t0
            try:  # serialised here: a value JSON cannot hold is a server bug, answered as one (a JSON 500)
                response = JSONResponse(_response(cfg.model_name, result, info, total))
            except Exception as err:  # noqa: BLE001
                raise _ServerBug(f"the answer could not be serialised ({type(err).__name__}: {err})") from err
        except ClientGone:  # not an error of the server's: counted apart, no traceback, no answer computed
            log.info("client disconnected before its answer was sent")
            eng.metrics.errors.labels("client_disconnected").inc()
            count("chat", 499)
            return Response(status_code=499)
        except BatcherFull:
            return busy(eng)
        except RequestError as err:
            eng.metrics.errors.labels(err.code).inc()
            count("chat", err.status)
            return _error(err)
        except _ServerBug:
            log.exception("chat completion failed")
            eng.metrics.errors.labels("server_error").inc()
            count("chat", 500)
            return _error(RequestError("internal error (the answer could not be serialised); the server keeps serving",
                                       status=500, code="server_error"))
        except ValueError as err:  # the model's own input checks, on this request alone (the batcher retried it)
            if not isinstance(err, INPUT_ERRORS):  # a plain ValueError may be a bug: keep its traceback
                log.warning("a request was refused by the model with a %s (a bug if the request is valid)",
                            type(err).__name__, exc_info=err)
            eng.metrics.errors.labels("unprocessable").inc()
            count("chat", 400)
            return _error(RequestError(f"the model cannot take this request: {err}"[:1000], code="unprocessable"))
        except Exception as err:  # noqa: BLE001 - a server bug: logged, answered 500, the server keeps serving
            log.exception("chat completion failed")
            eng.metrics.errors.labels("server_error").inc()
            count("chat", 500)
            return _error(RequestError(f"internal error ({type(err).__name__}); the server keeps serving",
                                       status=500, code="server_error"))
        eng.metrics.latency.observe(total)
        eng.metrics.queue.observe(info.queue_seconds)
        count("chat", 200)
        return response

    @app.get("/v1/models")
    async def models(request: Request):
        count("models", 200)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "safe"}]}

    @app.get("/health")
    async def health(request: Request):
        eng: Engine = request.app.state.engine
        count("health", 200)
        return {"status": "ok", "model": cfg.model_name, "policy": eng.policy_kind, "policy_state": eng.policy_state,
                "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "batches": eng.batches,
                "certificate": cfg.certificate}

    @app.get("/metrics")
    async def metrics(request: Request):
        return Response(request.app.state.engine.metrics.text(), media_type=CONTENT_TYPE)

    return app


__all__ = ["create_app", "limits_for", "load_engine"]
