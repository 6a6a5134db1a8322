"""Bad requests get a 4xx whose JSON error names the problem, never a 500, and the server keeps serving;
a hypothesis property test throws random requests at it."""
import base64
import binascii
import io
import json

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from safe.serve.app import create_app
from safe.stages.serve import ServeConfig
from tests.serve.conftest import audio_part, data_url, request

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(policy_run):
    run, _ = policy_run
    cfg = ServeConfig(run_dir=str(run), max_batch=4, max_wait_ms=0, max_body_mb=0.25)
    with TestClient(create_app(cfg)) as c:
        yield c


def _wav(seconds: float, rate: int = 16000, channels: int = 1, subtype="PCM_16") -> str:
    x = (0.1 * np.sin(np.arange(int(seconds * rate)) / 7.0)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x] * channels, 1) if channels > 1 else x, rate, format="WAV", subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode()


def _expect(client, body, status, *words, raw=False):
    r = client.post(URL, content=body, headers={"content-type": "application/json"}) if raw else client.post(URL, json=body)
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    for w in words:
        assert w in err["message"], (w, err["message"])
    return err


def test_each_kind_of_bad_request_is_a_named_4xx(client, policy_run):
    _, rows = policy_run
    good = request(rows[0])
    _expect(client, b"{not json", 400, "malformed JSON", raw=True)
    _expect(client, b"\xff\xfe\x00", 400, "malformed JSON", raw=True)
    _expect(client, b"[" * 100000 + b"]" * 100000, 400, "malformed JSON", raw=True)  # too deep to parse
    _expect(client, b"[1, 2]", 400, "JSON object", raw=True)
    _expect(client, {"messages": "hi"}, 400, "messages")
    _expect(client, {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, 400, "video")
    _expect(client, {**good, "temperature": -1}, 400, "temperature")
    _expect(client, {**good, "temperature": "hot"}, 400, "temperature")
    _expect(client, {**good, "n": 0}, 400, "n")
    _expect(client, {**good, "frobnicate": 1}, 400, "frobnicate")
    _expect(client, {**good, "stop": ["\n"]}, 400, "stop")
    _expect(client, {**good, "stream": True}, 400, "stream")
    _expect(client, {**good, "max_tokens": 10_000}, 400, "max_tokens")
    _expect(client, {**good, "model": "gpt-4o"}, 404, "gpt-4o")
    _expect(client, {"messages": [{"role": "system", "content": "be nice"}, *good["messages"]]}, 400, "one user turn")
    q = {"type": "text", "text": rows[0].question}
    img = {"type": "image_url", "image_url": {"url": data_url(rows[0].image)}}

    def msg(*parts, **extra):
        return {"messages": [{"role": "user", "content": list(parts)}], **extra}

    e = _expect(client, msg(q, {"type": "input_audio", "input_audio": {"data": "%%%not base64", "format": "wav"}}),
                400, "base64")
    assert e["param"] == "messages[0].content[1].input_audio.data"
    _expect(client, msg(q, {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"hello" * 50).decode(),
                                                                    "format": "wav"}}), 400, "input_audio")
    _expect(client, msg(q, {"type": "input_audio", "input_audio": {"data": _wav(0.2), "format": "aiff"}}), 400, "aiff")
    _expect(client, msg(q, {"type": "input_audio", "input_audio": {"data": _wav(1.5), "format": "wav"}}), 400,
            "1.50 s", "limit")
    _expect(client, msg(q, img, img), 400, "2 images")
    _expect(client, msg(q, audio_part(rows[0].audio), audio_part(rows[0].audio)), 400, "2 audio clips")
    _expect(client, msg(q, {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}), 400,
            "cannot decode the image")
    _expect(client, msg(q, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), 400, "remote")
    _expect(client, msg(q, {"type": "image_url", "image_url": {"url": str(rows[0].image)}}), 400,
            "--allow-local-media")
    _expect(client, msg(q, safe={"use_audio": True}), 400, "no input_audio")
    _expect(client, msg(img), 400, "no text")
    big = "data:image/png;base64," + "A" * 300_000
    _expect(client, msg(q, {"type": "image_url", "image_url": {"url": big}}), 413, "limit")
    # and it still answers a good request, with stereo 44.1 kHz float audio
    ok = client.post(URL, json=msg(q, img, {"type": "input_audio", "input_audio": {
        "data": _wav(0.2, 44100, 2, "FLOAT"), "format": "wav"}}))
    assert ok.status_code == 200 and ok.json()["safe"]["used_audio"] is True


def test_unknown_route_and_method_are_json_4xx(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "nothing" in r.json()["error"]["message"]
    assert client.get(URL).status_code == 405


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                     max_leaves=8)
_b64 = st.sampled_from([_wav(0.1), _wav(0.3, 8000, 2), "", "====", "aGVsbG8=", "UklGRg=="])
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20) | _json}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": st.sampled_from(
                               ["data:image/png;base64,aGVsbG8=", "data:,x", "file:///etc/passwd", "x.png", ""])})}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries(
        {"data": _b64, "format": st.sampled_from(["wav", "flac", "mp3", "ogg", "pcm16", ""])})}),
    _json)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot"]),
                                  "content": st.text(max_size=10) | st.lists(_part, max_size=3) | _json})
_request = st.fixed_dictionaries(
    {"messages": st.lists(_message, max_size=2) | _json},
    optional={"model": st.sampled_from(["safe", "other"]) | _json, "max_tokens": st.integers(-2, 70) | _json,
              "temperature": st.floats(-1, 3) | _json, "n": st.integers(-1, 5), "top_p": st.floats(0, 1.5),
              "safe": st.fixed_dictionaries({"use_audio": st.booleans() | st.none() | _json}) | _json,
              "stream": st.booleans(), "seed": st.integers() | st.none()})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=st.one_of(_request, _json))
def test_random_requests_never_get_a_500(client, body):
    _never_500(client, json.dumps(body, allow_nan=True).encode())


def _never_500(client, raw: bytes):
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:500], raw[:300])
    if r.status_code != 200:
        assert r.json()["error"]["message"]
    else:
        assert r.json()["choices"]
    assert client.get("/health").status_code == 200


# Text as clients send it, lone surrogates and control characters included (json.dumps escapes them as \uXXXX).
_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfffb", "\x00\x1b[2J", "\u202e", "\ufeff", "\U0001F600"])
_extreme = st.sampled_from([0, -0.0, 5e-324, 1e-300, 1e-30, 0.009, 0.01, 1.0, 2.0, 1e30, 1e308, -1e308, 2 ** 63,
                            -(2 ** 63), 10 ** 40, float("inf"), float("-inf"), float("nan")])


def _text_request(q):
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": q}]}], "max_tokens": 2}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(q=_text, user=_text)
@example(q="\ud800", user="")
def test_any_text_is_answered_or_refused(client, q, user):
    _never_500(client, json.dumps({**_text_request("what? " + q), "user": user}).encode())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(field=st.sampled_from(["max_tokens", "max_completion_tokens", "temperature", "top_p", "n"]), value=_extreme,
       temperature=st.sampled_from([None, 0.5]))
@example(field="temperature", value=1e-300, temperature=None)
@example(field="temperature", value=5e-324, temperature=None)
@example(field="top_p", value=5e-324, temperature=0.5)
def test_extreme_numbers_in_every_numeric_field(client, field, value, temperature):
    body = {**_text_request("what colour is it?"), field: value}
    if temperature is not None and field != "temperature":
        body["temperature"] = temperature
    _never_500(client, json.dumps(body, allow_nan=True).encode())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(value=_extreme.filter(lambda v: isinstance(v, float) and abs(v) < 3e38), use=st.sampled_from([None, True]))
def test_extreme_audio_samples(client, value, use):
    x = np.full(1600, np.float32(value), np.float32)
    x[::3] = 0.0
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what sound?"}, part]}], "max_tokens": 2}
    if use:
        body["safe"] = {"use_audio": True}
    r = client.post(URL, json=body)
    assert r.status_code in (200, 400), r.text[:300]
    if r.status_code == 200:  # answered: the audio was usable, and the answer is not an empty artefact
        assert abs(value) <= 1000 and r.json()["choices"][0]["message"]["content"] is not None


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(depth=st.integers(1, 3000), width=st.integers(0, 20000), where=st.sampled_from(["metadata", "messages",
                                                                                         "content", "top"]))
def test_deep_and_wide_json(client, depth, width, where):
    nest = "[" * depth + ",".join(["0"] * min(width, 50)) + "]" * depth
    wide = "[" + ",".join(['{"role": "user", "content": "x"}'] * width) + "]"
    raw = {"metadata": '{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + nest + "}",
           "messages": '{"messages": ' + wide + "}",
           "content": '{"messages": [{"role": "user", "content": ['
                      + ",".join(['{"type": "text", "text": "a"}'] * width) + "]}]}",
           "top": nest}[where]
    _never_500(client, raw.encode())


_HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x01\x00",
            b"BM", b"II*\x00", b"8BPS", b""]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(head=st.sampled_from(_HEADERS), rest=st.binary(max_size=64), size=st.tuples(st.integers(0, 2 ** 31),
                                                                                  st.integers(0, 2 ** 31)))
def test_random_image_headers(client, head, rest, size):
    import struct

    if head.startswith(b"\x89PNG"):  # a real IHDR declaring any size, then random bytes
        ihdr = struct.pack(">II", size[0] % 2 ** 31, size[1] % 2 ** 31) + b"\x08\x02\x00\x00\x00"
        head += struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", binascii.crc32(b"IHDR" + ihdr))
    url = "data:image/png;base64," + base64.b64encode(head + rest).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"},
                                                      {"type": "image_url", "image_url": {"url": url}}]}]}
    r = client.post(URL, json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_image", "image_too_large", "invalid_base64"), \
        r.text[:300]


def test_oversized_media_is_refused_from_its_header_before_decoding(client, policy_run):
    """A small request that declares a huge clip or canvas is refused without decoding it: an hour of
    silent FLAC (< 1 MB), 16,000 samples declared at 1 Hz, a 9,400 x 9,400 PNG."""
    import tracemalloc

    from PIL import Image

    _, rows = policy_run
    q = {"type": "text", "text": rows[0].question}

    def flac(seconds, rate):
        buf = io.BytesIO()
        sf.write(buf, np.zeros(int(seconds * rate), np.float32), rate, format="FLAC")
        return base64.b64encode(buf.getvalue()).decode()

    hour = {"messages": [{"role": "user", "content": [q, {"type": "input_audio", "input_audio": {
        "data": flac(3600, 8000), "format": "flac"}}]}]}
    slow = {"messages": [{"role": "user", "content": [q, {"type": "input_audio", "input_audio": {
        "data": _wav(16000, rate=1), "format": "wav"}}]}]}
    buf = io.BytesIO()
    Image.new("1", (9400, 9400)).save(buf, format="PNG")  # bilevel: a few KB on the wire
    canvas = {"messages": [{"role": "user", "content": [q, {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}]}]}
    tracemalloc.start()
    try:
        assert _expect(client, hour, 400, "3600.00 s", "--max-audio-seconds")["code"] == "audio_too_long"
        assert _expect(client, slow, 400, "16000.00 s")["code"] == "audio_too_long"
        assert _expect(client, canvas, 400, "9400x9400")["code"] == "image_too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak  # decoding any of them would take 100s of MB
