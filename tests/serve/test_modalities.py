"""`safe serve` with a content part per modality: an ``input_depth`` part (.npy or PNG) on a run carrying audio
and depth, ``safe.use_depth``, the response naming the modalities each answer used, and bad maps refused with a
4xx naming the part."""
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import safe
from safe.bench.vision import IMAGE_SIZE
from safe.serve.app import create_app
from safe.stages.serve import ServeConfig
from tests.inference.test_modalities import composed, modal  # noqa: F401 (fixtures: an audio run with depth added; the same with two policies)
from tests.serve.conftest import request

URL = "/v1/chat/completions"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _npy(arr) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype == object)
    return base64.b64encode(buf.getvalue()).decode()


def _png(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _depth(data: str, fmt: str = "npy") -> dict:
    return {"type": "input_depth", "input_depth": {"data": data, "format": fmt}}


def _with(body: dict, *parts) -> dict:
    body["messages"][0]["content"].extend(parts)
    return body


@pytest.fixture(scope="module")
def served(modal):  # noqa: F811
    _, _, _, both, _, rows = modal
    cfg = ServeConfig(run_dir=str(both), max_batch=4, max_wait_ms=0)
    with TestClient(create_app(cfg)) as c:
        yield c, rows, both


def test_an_input_depth_part_is_used_and_the_response_says_so(served):
    client, rows, both = served
    m = np.random.default_rng(0).uniform(0.5, 4.0, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    p = safe.pipeline(both)
    want = p(image=rows[2].image, question=rows[2].question, depth=m)
    r = client.post(URL, json=_with(request(rows[2], audio=False), _depth(_npy(m))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["safe"]["modalities"] == ["depth"] and body["safe"]["used_depth"] is True
    assert body["choices"][0]["message"]["content"] == want["answer"]
    both_parts = client.post(URL, json=_with(request(rows[0]), _depth(_npy(m)))).json()["safe"]
    assert both_parts["modalities"] == ["audio", "depth"]
    off = client.post(URL, json=_with(request(rows[2], audio=False, safe={"use_depth": False}),
                                      _depth(_npy(m)))).json()
    none = client.post(URL, json=request(rows[2], audio=False)).json()
    assert off["safe"]["modalities"] == [] and off["safe"]["used_depth"] is False
    assert off["choices"][0]["message"]["content"] == none["choices"][0]["message"]["content"] == \
        p(image=rows[2].image, question=rows[2].question)["answer"]
    png = client.post(URL, json=_with(request(rows[2], audio=False),
                                      _depth(_png((m * 1000).astype(np.uint16)), "png")))
    assert png.status_code == 200 and png.json()["safe"]["modalities"] == ["depth"]


def _expect(client, body, status, param, *words):
    r = client.post(URL, json=body)
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param, err
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_bad_depth_parts_are_a_4xx_naming_the_part(served):
    client, rows, _ = served
    m = np.ones((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    part = "messages[0].content[2].input_depth"
    body = lambda *parts, **kw: _with(request(rows[2], audio=False, **kw), *parts)  # noqa: E731
    _expect(client, body(_depth(_npy(m), "tiff")), 400, f"{part}.format", "'tiff' is not supported")
    _expect(client, body(_depth("not base64!")), 400, f"{part}.data", "base64")
    _expect(client, body(_depth(_png(np.zeros((4, 4), np.uint8)))), 400, f"{part}.data", "not a npy file")
    _expect(client, body(_depth(_npy(np.array([{}, {}], dtype=object)))), 400, f"{part}.data", "array of numbers")
    _expect(client, body(_depth(_npy(np.zeros((5000, 1), np.float32)))), 400, part, "1x5000 map")
    _expect(client, body(_depth(_npy(np.full((4, 4), np.nan, np.float32)))), 400, f"{part}.data", "NaN")
    _expect(client, body(_depth(_npy(np.ones((16, 16), np.float32)))), 400, f"{part}.data",
            f"reads {IMAGE_SIZE}x{IMAGE_SIZE} maps", "16x16")
    _expect(client, body(_depth(_npy(m)), _depth(_npy(m))), 400, "messages[0].content", "2 input_depth parts")
    _expect(client, body(safe={"use_depth": True}), 400, "safe.use_depth", "no input_depth part")
    assert client.post(URL, json=body(_depth(_npy(m)))).status_code == 200  # and the server keeps serving


def test_a_run_without_depth_refuses_an_input_depth_part(policy_run):
    run, rows = policy_run
    with TestClient(create_app(ServeConfig(run_dir=str(run), max_batch=2, max_wait_ms=0))) as client:
        m = np.ones((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        _expect(client, _with(request(rows[3], audio=False), _depth(_npy(m))), 400,
                "messages[0].content[2].input_depth", "this model has no depth modality")


def test_safe_serve_takes_the_depth_encoder_folder(modal):  # noqa: F811
    """A depth-primary run whose processor names no encoder starts with --depth-encoder and answers with depth;
    without it the start is refused naming the flag."""
    base, vit, depth_run, _, _, rows = modal
    from safe.cli import COMMANDS, build_parser

    assert "--depth-encoder" in build_parser("serve", COMMANDS["serve"]).format_help()
    from safe.serve.app import load_engine

    with pytest.raises(ValueError, match="--depth-encoder"):
        load_engine(ServeConfig(run_dir=str(depth_run), base=str(base)))
    cfg = ServeConfig(run_dir=str(depth_run), base=str(base), depth_encoder=str(vit), max_wait_ms=0)
    m = np.random.default_rng(1).uniform(0.5, 4.0, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with TestClient(create_app(cfg)) as client:
        r = client.post(URL, json=_with(request(rows[2], audio=False), _depth(_npy(m))))
    assert r.status_code == 200, r.text
    assert r.json()["safe"]["modalities"] == ["depth"]


def test_served_composed_model_lets_each_modality_policy_decide(modal, composed):  # noqa: F811
    """A composed checkpoint with an audio policy and a depth policy: each request's depth is decided by the depth
    policy (its preview), its audio by the audio policy, as safe.pipeline decides them."""
    from tests.inference.test_modalities import near_and_far

    _, _, _, _, _, rows = modal
    near, far = near_and_far()
    p = safe.pipeline(composed)
    with TestClient(create_app(ServeConfig(run_dir=str(composed), max_batch=1, max_wait_ms=0))) as client:
        for row, m, want_depth in ((rows[2], near, True), (rows[3], far, False), (rows[0], near, True)):
            audio = row.audio is not None and row is rows[0]
            r = client.post(URL, json=_with(request(row, audio=audio), _depth(_npy(m))))
            assert r.status_code == 200, r.text
            got = r.json()["safe"]
            assert got["used_depth"] is want_depth and got["used_audio"] is audio
            alone = p(image=row.image, question=row.question, audio=row.audio if audio else None, depth=m)
            assert r.json()["choices"][0]["message"]["content"] == alone["answer"]
            assert alone["used_depth"] is want_depth
