"""safe serve's endpoint on the tiny trained run: OpenAI shapes, the safe object, forced / forbidden audio,
the policy deciding, dynamic batching with the per-batch guarantee (a row without audio is the base's
answer on that batch), the clip cache, /metrics, /v1/models and /health."""
import concurrent.futures as cf

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from safe.serve.app import create_app
from safe.stages.serve import ServeConfig
from tests.serve.conftest import request, set_policy_bias


@pytest.fixture(scope="module")
def client(policy_run):
    run, _ = policy_run
    with TestClient(create_app(ServeConfig(run_dir=str(run), max_batch=4, max_wait_ms=400))) as c:
        yield c


def test_one_request_openai_shape_and_safe_object(client, policy_run):
    _, rows = policy_run
    set_policy_bias(client.app.state.engine, 10.0)
    r = client.post("/v1/chat/completions", json=request(rows[0]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "safe" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    s = body["safe"]
    assert s["used_audio"] is True and s["decided_by"] == "policy" and s["audio_probability"] > 0.99
    assert s["policy"] == "mlp" and s["policy_state"] == "early"
    assert set(s["timing_ms"]) >= {"queue", "state", "encoder", "generate", "total"}
    assert s["timing_ms"]["state"] > 0 and s["batch"]["size"] == 1
    # the same question through the library: the same answer
    pipe = client.app.state.engine.pipeline
    ref = pipe(image=rows[0].image, question=rows[0].question, audio=rows[0].audio)
    assert choice["message"]["content"] == ref["answer"] and ref["used_audio"]


def test_use_audio_override_and_policy_skip(client, policy_run):
    _, rows = policy_run
    eng = client.app.state.engine
    set_policy_bias(eng, -10.0)  # the policy now skips every clip
    try:
        skip = client.post("/v1/chat/completions", json=request(rows[1])).json()["safe"]
        assert skip["used_audio"] is False and skip["decided_by"] == "policy" and skip["audio_probability"] < 0.01
        assert skip["encoder"] == {"ran": False, "cache_hit": None}
        forced = client.post("/v1/chat/completions", json=request(rows[1], safe={"use_audio": True})).json()["safe"]
        assert forced["used_audio"] is True and forced["decided_by"] == "request" and forced["audio_probability"] is None
    finally:
        set_policy_bias(eng, 10.0)
    off = client.post("/v1/chat/completions", json=request(rows[1], safe={"use_audio": False})).json()
    vl = client.post("/v1/chat/completions", json=request(rows[1], audio=False)).json()
    assert off["safe"]["used_audio"] is False and off["safe"]["decided_by"] == "request"
    assert vl["safe"]["decided_by"] == "no_audio"
    assert off["choices"][0]["message"]["content"] == vl["choices"][0]["message"]["content"]


def _base_answers(engine, rows_in_batch, max_new_tokens=6):
    """The frozen base model's greedy answers on exactly this batch (same rows, same order)."""
    p = engine.pipeline
    images = [Image.open(e.image).convert("RGB") for e in rows_in_batch]
    inputs = p.processor(text=[e.question for e in rows_in_batch], images=images)
    vl = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad(), p.model.hooks_detached() as base:
        ids = base.generate(**vl, max_new_tokens=max_new_tokens, do_sample=False)
    return p.processor.decode(ids, vl["input_ids"].shape[1])


def test_mixed_batch_rows_without_audio_are_the_base_answer_on_that_batch(client, policy_run):
    """Four concurrent requests inside one batching window share one batch: a forced-audio row, a row the
    policy skips, a VL-only row (no clip) and a forbidden-audio row. Every row that did not use audio
    is bit-for-bit the base model's answer on that same batch."""
    _, rows = policy_run
    eng = client.app.state.engine
    set_policy_bias(eng, -10.0)
    sent = [(rows[0], request(rows[0], safe={"use_audio": True})), (rows[2], request(rows[2])),
            (rows[3], request(rows[3], audio=False)), (rows[4], request(rows[4], safe={"use_audio": False}))]
    calls = eng.model.audio_encoder_calls
    try:
        with cf.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda body: client.post("/v1/chat/completions", json=body), [b for _, b in sent]))
    finally:
        set_policy_bias(eng, 10.0)
    bodies = [g.json() for g in got]
    assert all(g.status_code == 200 for g in got), [g.text for g in got]
    assert len({b["safe"]["batch"]["id"] for b in bodies}) == 1 and all(b["safe"]["batch"]["size"] == 4 for b in bodies)
    order = sorted(range(4), key=lambda i: bodies[i]["safe"]["batch"]["row"])
    batch = [sent[i][0] for i in order]
    answers = [bodies[i]["choices"][0]["message"]["content"] for i in order]
    used = [bodies[i]["safe"]["used_audio"] for i in order]
    assert sorted(used) == [False, False, False, True]
    base = _base_answers(eng, batch)
    assert [a for a, u in zip(answers, used) if not u] == [b for b, u in zip(base, used) if not u]
    assert eng.model.audio_encoder_calls - calls <= 1  # only the forced row's clip (or a cache hit)


def test_a_text_only_request_never_shares_a_batch_with_image_requests(client, policy_run):
    """In a batch with images a text-only row would get the processor's stand-in image (and its image
    tokens), so its answer would depend on its batch-mates: it is batched only with other text-only rows,
    and answers (and counts prompt tokens) the same alone or beside concurrent image requests."""
    _, rows = policy_run
    text_only = {"model": "safe", "messages": [{"role": "user", "content": [{"type": "text", "text": rows[3].question}]}]}
    alone = client.post("/v1/chat/completions", json=text_only).json()
    bodies = [request(rows[3], audio=False), text_only, request(rows[4], audio=False), text_only]
    with cf.ThreadPoolExecutor(4) as pool:
        got = [r.json() for r in pool.map(lambda b: client.post("/v1/chat/completions", json=b), bodies)]
    image_batches = {got[0]["safe"]["batch"]["id"], got[2]["safe"]["batch"]["id"]}
    for g in (got[1], got[3]):
        assert g["safe"]["batch"]["id"] not in image_batches
        assert g["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
        assert g["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]


def test_clip_cache_skips_the_encoder_for_a_repeated_clip(client, policy_run):
    _, rows = policy_run
    eng = client.app.state.engine
    body = request(rows[5], safe={"use_audio": True})
    first = client.post("/v1/chat/completions", json=body).json()
    calls = eng.model.audio_encoder_calls
    again = client.post("/v1/chat/completions", json=body).json()
    assert again["safe"]["encoder"] == {"ran": False, "cache_hit": True} and eng.model.audio_encoder_calls == calls
    assert again["choices"] == first["choices"]
    metrics = client.get("/metrics").text
    hits = [line for line in metrics.splitlines() if line.startswith("safe_clip_cache_hits_total")]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_n_choices_sampling_and_max_tokens(client, policy_run):
    _, rows = policy_run
    greedy = client.post("/v1/chat/completions", json=request(rows[3], audio=False, n=3)).json()
    assert len(greedy["choices"]) == 3 and len({c["message"]["content"] for c in greedy["choices"]}) == 1
    sampled = client.post("/v1/chat/completions", json=request(rows[3], n=2, temperature=1.5, top_p=0.9))
    assert sampled.status_code == 200 and [c["index"] for c in sampled.json()["choices"]] == [0, 1]
    short = client.post("/v1/chat/completions", json=request(rows[3], audio=False, max_tokens=1)).json()
    assert short["usage"]["completion_tokens"] <= 1
    assert short["choices"][0]["finish_reason"] in ("stop", "length")


def test_models_health_metrics(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "safe"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["policy"] == "mlp" and health["max_batch"] == 4
    text = client.get("/metrics").text
    for name in ("safe_requests_total", "safe_request_errors_total", "safe_audio_use_rate", "safe_encoder_rows_total",
                 "safe_request_seconds_bucket", "safe_batch_size_bucket", "safe_batch_stage_seconds_bucket",
                 "safe_clip_cache_misses_total", "safe_rows_total"):
        assert name in text, name


def test_openai_client_with_an_audio_part(client, policy_run):
    """The README's client example, through the openai package (skipped where it is not installed)."""
    openai = pytest.importorskip("openai")
    from tests.serve.conftest import audio_part, data_url

    _, rows = policy_run
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    r = oa.chat.completions.create(model="safe", max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "text", "text": rows[0].question},
        {"type": "image_url", "image_url": {"url": data_url(rows[0].image)}},
        audio_part(rows[0].audio)]}])
    assert isinstance(r.choices[0].message.content, str) and r.model_extra["safe"]["used_audio"] is True
    with pytest.raises(openai.BadRequestError, match="stop"):
        oa.chat.completions.create(model="safe", stop=["x"], messages=[{"role": "user", "content": "hi"}])


def test_local_image_paths_only_with_allow_local_media(policy_run):
    run, rows = policy_run
    e = rows[3]
    cfg = ServeConfig(run_dir=str(run), allow_local_media=True, max_wait_ms=0)

    def body(url):
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": e.question},
                                                          {"type": "image_url", "image_url": {"url": url}}]}]}

    with TestClient(create_app(cfg)) as local:
        by_data = local.post("/v1/chat/completions", json=request(e, audio=False)).json()
        for url in (str(e.image), "file://" + str(e.image)):
            got = local.post("/v1/chat/completions", json=body(url))
            assert got.status_code == 200 and got.json()["choices"] == by_data["choices"]
        missing = local.post("/v1/chat/completions", json=body(str(e.image) + ".gone"))
        assert missing.status_code == 400 and ".gone" in missing.json()["error"]["message"]
