"""What one client sends cannot take the server down, stall it, or get a 500: each limit is a 4xx naming
its flag, nothing non-finite reaches the model, and clients that go away are counted as such."""
import asyncio
import base64
import io
import json
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image

from safe.serve.app import create_app
from safe.serve.clip_cache import ClipCache
from safe.stages.serve import ServeConfig
from tests.serve.conftest import data_url, request, set_policy_bias

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(policy_run):
    run, _ = policy_run
    cfg = ServeConfig(run_dir=str(run), max_batch=4, max_wait_ms=0, max_body_mb=0.25, body_timeout_s=1.0,
                      max_messages=4, max_parts=6)
    with TestClient(create_app(cfg)) as c:
        yield c


def _refused(client, body, status, code, *words):
    r = client.post(URL, json=body) if not isinstance(body, bytes) else client.post(
        URL, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err["message"])
    assert len(r.content) < 2000  # the error names the problem, it does not echo the request
    return err


def _msg(*parts, **extra):
    return {"messages": [{"role": "user", "content": list(parts)}], **extra}


def _float_wav(peak: float, channels: int = 1, seconds: float = 0.2) -> dict:
    x = np.full((int(16000 * seconds), channels), peak, np.float32)
    x[::2] *= -1
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}


def _png_url(size, mode="1") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_lone_surrogate_in_text_is_a_400(client, policy_run):
    _, rows = policy_run
    raw = json.dumps(_msg({"type": "text", "text": "what is \ud800 this?"})).encode()  # json escapes it as \ud800
    err = _refused(client, raw, 400, "invalid_text", "surrogate")
    assert err["param"] == "messages[0].content[0].text"
    _refused(client, json.dumps({"messages": [{"role": "user", "content": "hi"}], "user": "\udfff"}).encode(), 400,
             "invalid_text")
    # a valid pair (an emoji escaped by an ASCII-only encoder) is text like any other
    ok = client.post(URL, content=json.dumps(request(rows[3], audio=False) | {"user": "\U0001F600"}).encode(),
                     headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("t", [1e-300, 5e-324, 0.009])
def test_tiny_temperatures_are_refused_not_sampled_into_nan(client, policy_run, t):
    _, rows = policy_run
    _refused(client, request(rows[3], audio=False, temperature=t), 400, "invalid_field", "temperature")


def test_huge_float_samples_are_refused_and_never_reach_the_adapters(client, policy_run):
    """Finite float samples of 1e30 overflowed the preview (a 500) and, with use_audio true, gave an empty
    answer from non-finite features (a silent wrong answer)."""
    _, rows = policy_run
    set_policy_bias(client.app.state.engine, 10.0)
    q = {"type": "text", "text": rows[0].question}
    img = {"type": "image_url", "image_url": {"url": data_url(rows[0].image)}}
    for extra in ({}, {"safe": {"use_audio": True}}):
        _refused(client, _msg(q, img, _float_wav(1e30), **extra), 400, "invalid_audio", "peak", "1e+30")
    _refused(client, _msg(q, img, _float_wav(3e38, channels=2)), 400, "invalid_audio", "peak")
    # loud but sane float audio is still answered, with the audio path
    ok = client.post(URL, json=_msg(q, img, _float_wav(4.0), safe={"use_audio": True}))
    assert ok.status_code == 200 and ok.json()["safe"]["used_audio"] is True


def test_audio_files_with_too_many_channels_are_refused_from_the_header(client, policy_run):
    _, rows = policy_run
    q = {"type": "text", "text": rows[0].question}
    _refused(client, _msg(q, _float_wav(0.1, channels=32, seconds=0.05)), 400, "invalid_audio", "32 channels")


def test_prompt_longer_than_the_base_positions_is_refused(client, policy_run):
    _, rows = policy_run
    long = " ".join([rows[3].question] * 2000)  # ~20K tokens; the built-in base takes 128 positions
    t0 = time.perf_counter()
    _refused(client, _msg({"type": "text", "text": long}), 400, "prompt_too_long", "128", "--max-prompt-tokens")
    assert time.perf_counter() - t0 < 5
    # a prompt that fits, but not with the answer asked for
    mid = " ".join([rows[3].question] * 12)  # ~80 tokens: fits 128 positions, not with 64 more
    _refused(client, _msg({"type": "text", "text": mid}, max_tokens=64), 400, "prompt_too_long", "positions")


def test_prompt_token_flag(policy_run):
    run, rows = policy_run
    with TestClient(create_app(ServeConfig(run_dir=str(run), max_wait_ms=0, max_prompt_tokens=4))) as c:
        _refused(c, request(rows[3], audio=False), 400, "prompt_too_long", "at most 4")


def test_message_and_part_counts_are_limited_before_validation(client, policy_run):
    _, rows = policy_run
    many = {"messages": [{"role": "user", "content": "x"}] * 5000}
    t0 = time.perf_counter()
    _refused(client, many, 400, "too_many_messages", "5000", "--max-messages")
    assert time.perf_counter() - t0 < 2
    _refused(client, _msg(*[{"type": "text", "text": "a"}] * 7), 400, "too_many_parts", "--max-parts")
    # within the message limit, the wrong-roles error lists a few roles, not all of them
    err = _refused(client, {"messages": [{"role": "system", "content": "x"}] * 4}, 400, "unsupported_messages")
    assert err["message"].count("system") <= 4


def test_deep_json_is_refused(client):
    deep = {"messages": [{"role": "user", "content": "hi"}], "metadata": json.loads("[" * 500 + "]" * 500)}
    _refused(client, deep, 400, "too_deep")


def test_image_sides_are_limited_separately_and_judged_before_decoding(client, policy_run):
    """A 1 x 16,000,000 strip passed the old pixel cap (16.7M) and was decoded (+625 MB); an ICO whose
    directory says 16 x 16 holding a 12,000 x 12,000 PNG was decoded before its size was known."""
    import tracemalloc

    _, rows = policy_run
    q = {"type": "text", "text": rows[0].question}
    strip = _png_url((16_000_000, 1))
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    inner = buf.getvalue()
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22) + inner
    tracemalloc.start()
    try:
        _refused(client, _msg(q, {"type": "image_url", "image_url": {"url": strip}}), 400, "image_too_large",
                 "16000000x1", "--max-image-width")
        _refused(client, _msg(q, {"type": "image_url", "image_url": {
            "url": "data:image/x-icon;base64," + base64.b64encode(ico).decode()}}), 400, "invalid_image", "PNG")
        _refused(client, _msg(q, {"type": "image_url", "image_url": {"url": _png_url((10, 5000))}}), 400,
                 "image_too_large", "10x5000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_at_most_max_decodes_images_decode_at_once(policy_run, monkeypatch):
    import safe.serve.media as media

    run, rows = policy_run
    busy, most, lock = [0], [0], threading.Lock()
    real = media.read_image

    def slow(*a, **k):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.2)
        with lock:
            busy[0] -= 1
        return real(*a, **k)

    monkeypatch.setattr(media, "read_image", slow)
    with TestClient(create_app(ServeConfig(run_dir=str(run), max_wait_ms=0, max_decodes=2))) as c:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: c.post(URL, json=request(rows[3], audio=False)).status_code, range(6)))
    assert codes == [200] * 6 and most[0] == 2


def test_max_tokens_and_max_completion_tokens_must_agree(client, policy_run):
    _, rows = policy_run
    _refused(client, request(rows[3], audio=False, max_tokens=3, max_completion_tokens=5), 400, "invalid_field",
             "disagree")


def test_a_response_that_cannot_be_serialised_is_a_json_500_counted_as_500(client, policy_run, monkeypatch):
    _, rows = policy_run
    eng = client.app.state.engine
    real = eng.run

    def nan_probability(batch):
        out = real(batch)
        for r in out:
            r.audio_probability = float("nan")
        return out

    monkeypatch.setattr(client.app.state.batcher, "run", nan_probability)
    r = client.post(URL, json=request(rows[3], audio=False))
    assert r.status_code == 500 and r.json()["error"]["code"] == "server_error"
    assert 'safe_requests_total{endpoint="chat",status="500"}' in client.get("/metrics").text


def test_parsing_and_validation_run_off_the_event_loop(client, policy_run, monkeypatch):
    import safe.serve.app as app_module

    _, rows = policy_run
    seen = []
    real = app_module.parse_request
    monkeypatch.setattr(app_module, "parse_request", lambda data: seen.append(threading.current_thread()) or real(data))
    loop_thread = client.portal.call(lambda: _thread())
    assert client.post(URL, json=request(rows[3], audio=False)).status_code == 200
    assert seen and seen[0] is not loop_thread


async def _thread():
    return threading.current_thread()


def test_clip_cache_is_bounded_in_bytes():
    import torch

    cache = ClipCache(100, max_bytes=3 * 400)
    for i in range(5):
        cache.put(str(i), torch.zeros(100))  # 400 bytes each
    assert len(cache) == 3 and cache.bytes == 1200 and "0" not in cache and "4" in cache
    cache.put("big", torch.zeros(1000))  # larger than the whole cache: not stored, nothing dropped
    assert "big" not in cache and len(cache) == 3


# ------------------------------------------------------------------------------------------------------
# The connection: timeouts, disconnects, oversized bodies sent in full

async def _asgi(app, chunks, then="hang"):
    """POST ``chunks`` straight to the ASGI app; after them the client hangs, or disconnects."""
    sent, queue = [], list(chunks)

    async def receive():
        if queue:
            body = queue.pop(0)
            if body is None:
                await asyncio.sleep(3600)  # a body that never arrives
            if body == "gone":
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": bool(queue)}
        if then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    size = sum(len(c) for c in chunks if isinstance(c, bytes))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": URL, "raw_path": URL.encode(), "query_string": b"", "root_path": "", "client": ("t", 1),
             "server": ("t", 80), "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(size).encode())], "app": app}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_body_that_never_arrives_times_out_with_408(client):
    t0 = time.perf_counter()
    status, body = client.portal.call(_asgi, client.app, [b'{"messages": ', None])
    assert status == 408 and b"--body-timeout-s" in body and time.perf_counter() - t0 < 5


def test_a_client_gone_mid_body_is_counted_as_a_disconnect_not_a_500(client):
    status, _ = client.portal.call(_asgi, client.app, [b'{"messages": ', "gone"])
    metrics = client.get("/metrics").text
    assert status == 499 and 'status="499"' in metrics and 'code="client_disconnected"' in metrics


def test_queued_work_of_a_client_that_went_away_is_dropped(client, policy_run, monkeypatch):
    _, rows = policy_run
    batcher = client.app.state.batcher
    gate, ran = threading.Event(), []
    real = batcher.run

    def blocking(batch):
        ran.append([r.question for r in batch])
        gate.wait(10)
        return real(batch)

    monkeypatch.setattr(batcher, "run", blocking)
    first = json.dumps(request(rows[3], audio=False)).encode()
    second = json.dumps(request(rows[4], audio=False, max_tokens=5)).encode()

    async def both():
        a = asyncio.create_task(_asgi(client.app, [first]))
        await asyncio.sleep(0.3)  # the first batch is running (blocked)
        b = asyncio.create_task(_asgi(client.app, [second], "disconnect"))
        await asyncio.sleep(0.8)  # the second notices its client left while queued
        gate.set()
        return await a, await b

    (sa, _), (sb, _) = client.portal.call(both)
    assert sa == 200 and sb == 499
    time.sleep(0.3)
    assert ran == [[rows[3].question]]  # the second request was never computed


def test_an_oversized_body_sent_in_full_gets_its_413(policy_run):
    """Python's urllib writes the whole body before reading: it got a connection reset, not the 413."""
    import socket
    import urllib.error
    import urllib.request

    import uvicorn

    run, _ = policy_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(run_dir=str(run), max_wait_ms=0, max_body_mb=0.5))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            if server.started:
                break
            time.sleep(0.05)
        body = json.dumps({"messages": [{"role": "user", "content": "x" * (8 << 20)}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{URL}", data=body,
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        assert caught.value.code == 413 and "--max-body-mb" in json.loads(caught.value.read())["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(10)
