"""Load test of ``safe serve`` over loopback (issue 18): C concurrent clients (1, 8, 32) send a mix of
audio and VL-only questions from the built-in test split; zero errors expected; p50 / p95 latency and
throughput, with and without dynamic batching, policy vs always-audio.

Every request carries its example's image and clip (as a deployed client would); in the ``policy``
mode the run's policy decides per request whether to listen, in ``always-audio`` the request says
``"safe": {"use_audio": true}``. Batching ``on`` is ``--max-batch 32 --max-wait-ms W``; ``off`` is
``--max-batch 1``. The server runs in a subprocess (``safe serve``; ``--server thread`` runs it in this
process, as the CI version does). Bounded: ``--requests`` per cell and ``--time-limit`` seconds per cell
(a cell that hits the limit stops and says so), so it always ends by itself.

    python benchmarks/load_test.py --run-dir runs/demo --data .cache/safe/benchmark --requests 96
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_bodies(data: str, model: str = "safe", limit: int | None = None) -> list[tuple[dict, bool]]:
    """(request body, needs_audio) per test example: text, the image as a data: URL, the clip as input_audio."""
    from safe.bench.files import load_split

    out = []
    for e in load_split(data, "test")[:limit]:
        content = [{"type": "text", "text": e.question}]
        if e.image:
            content.append({"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(Path(e.image).read_bytes()).decode()}})
        if e.audio:
            content.append({"type": "input_audio", "input_audio": {
                "data": base64.b64encode(Path(e.audio).read_bytes()).decode(), "format": Path(e.audio).suffix[1:]}})
        out.append(({"model": model, "messages": [{"role": "user", "content": content}]}, bool(e.needs_audio)))
    return out


@contextmanager
def running_server(run_dir: str, max_batch: int, max_wait_ms: float, mode: str = "subprocess", cache_clips: int = 0):
    """A ``safe serve`` on a free loopback port for the block; yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--run-dir", str(run_dir), "--port", str(port), "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms), "--cache-clips", str(cache_clips), "--log-level", "warning"]
    if mode == "thread":
        import uvicorn

        from safe.serve.app import create_app, load_engine
        from safe.stages.serve import ServeConfig

        cfg = ServeConfig(run_dir=str(run_dir), port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          cache_clips=cache_clips)
        server = uvicorn.Server(uvicorn.Config(create_app(cfg, load_engine(cfg)), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the server thread stopped during start-up")
                time.sleep(0.05)
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=30)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "safe.cli", "serve", *args], env=env)
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"safe serve exited with code {proc.returncode} during start-up")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("safe serve did not answer /health within 300 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _clients(url: str, bodies: list[dict], concurrency: int, time_limit: float) -> dict:
    """``concurrency`` clients sharing ``bodies`` (each sent once), stopping at ``time_limit`` seconds."""
    todo = list(enumerate(bodies))
    latencies, errors, used, sizes, statuses = [], 0, [], [], {}
    parts: dict[str, list[float]] = {"state": [], "encoder": [], "generate": []}
    t0 = time.perf_counter()
    stopped = False

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, stopped
        while todo:
            if time.perf_counter() - t0 > time_limit:
                stopped = True
                return
            _, body = todo.pop(0)
            t = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", json=body, timeout=120)
                ok = r.status_code == 200
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except httpx.HTTPError as err:
                ok = False
                statuses[type(err).__name__] = statuses.get(type(err).__name__, 0) + 1
            latencies.append(time.perf_counter() - t)
            if not ok:
                errors += 1
                continue
            s = r.json()["safe"]
            used.append(s["used_audio"])
            sizes.append(s["batch"]["size"])
            for k in parts:
                parts[k].append(s["timing_ms"][k])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "statuses": statuses, "wall": time.perf_counter() - t0,
            "used": used, "sizes": sizes, "parts": parts, "stopped": stopped}


def summarise(raws: list[dict]) -> dict:
    """The figures of one cell from its rounds: latencies pooled, throughput = requests / summed wall time."""
    lat = [x for r in raws for x in r["latencies"]]
    used = [x for r in raws for x in r["used"]]
    sizes = [x for r in raws for x in r["sizes"]]
    wall = sum(r["wall"] for r in raws)
    statuses: dict = {}
    for r in raws:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) > 1 else lat * 19
    parts = {k: [x for r in raws for x in r["parts"][k]] for k in raws[0]["parts"]}
    return {"requests": len(lat), "errors": sum(r["errors"] for r in raws), "statuses": statuses,
            "seconds": round(wall, 3), "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p95_ms": round(q[18] * 1000, 1), "throughput_rps": round(len(lat) / wall, 2),
            "audio_used": round(sum(used) / max(1, len(used)), 3),
            "mean_batch": round(sum(sizes) / max(1, len(sizes)), 2), "hit_time_limit": any(r["stopped"] for r in raws),
            **{f"batch_{k}_ms": round(statistics.fmean(v), 2) if v else None for k, v in parts.items()}}


def run(run_dir: str, data: str, requests: int = 96, concurrency=(1, 8, 32), time_limit: float = 120.0,
        server: str = "subprocess", max_wait_ms: float = 5.0, batching=("on", "off"),
        modes=("policy", "always-audio"), cache_clips: int = 0, rounds: int = 4, echo=print) -> list[dict]:
    """Every cell of batching x concurrency x mode; one dict per cell, its ``requests`` sent in ``rounds``
    rounds alternating with the other modes'. ``cache_clips`` 0 (default): every
    audio row runs the encoder, as fresh clips do (the split's clips repeat across a cell's requests)."""
    pool = request_bodies(data)
    if not pool:
        raise ValueError(f"{data}: the test split is empty")
    rows = []
    for batch in batching:
        with running_server(run_dir, 32 if batch == "on" else 1, max_wait_ms, server, cache_clips) as url:
            warm = pool[0][0]
            for _ in range(3):  # first calls pay one-off costs (allocations, lazy imports)
                httpx.post(url + "/v1/chat/completions", json=warm, timeout=120).raise_for_status()
            for c in concurrency:
                # the modes alternate in rounds, so drift in the machine's load hits both alike
                raws: dict[str, list[dict]] = {m: [] for m in modes}
                per_round = [requests // rounds + (1 if k < requests % rounds else 0) for k in range(rounds)]
                start = 0
                for n in per_round:
                    for mode in modes:
                        bodies = []
                        for i in range(start, start + n):
                            body = dict(pool[i % len(pool)][0])
                            if mode == "always-audio":
                                body["safe"] = {"use_audio": True}
                            bodies.append(body)
                        raws[mode].append(asyncio.run(_clients(url, bodies, c, time_limit / rounds)))
                    start += n
                for mode in modes:
                    row = {"batching": batch, "mode": mode, "concurrency": c, **summarise(raws[mode])}
                    rows.append(row)
                    echo(json.dumps(row))
    return rows


def table(rows: list[dict]) -> str:
    head = ("| batching | audio | clients | requests | errors | p50 ms | p95 ms | req/s | audio used | mean batch |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['batching']} | {r['mode']} | {r['concurrency']} | {r['requests']}"
             f"{' (time limit)' if r['hit_time_limit'] else ''} | {r['errors']} | {r['p50_ms']} | {r['p95_ms']} | "
             f"{r['throughput_rps']} | {r['audio_used']:.0%} | {r['mean_batch']} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="trained run to serve (checkpoints/policy)")
    ap.add_argument("--data", default=".cache/safe/benchmark", help="built-in benchmark folder (its test split)")
    ap.add_argument("--requests", type=int, default=96, help="requests per cell")
    ap.add_argument("--concurrency", default="1,8,32", help="concurrent clients, comma-separated")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per cell at most")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="batching window with batching on")
    ap.add_argument("--server", choices=("subprocess", "thread"), default="subprocess")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per cell, alternating the modes")
    ap.add_argument("--cache-clips", type=int, default=0,
                    help="the server's clip cache (default 0: every audio row runs the encoder, as fresh clips do)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    rows = run(a.run_dir, a.data, a.requests, tuple(int(c) for c in a.concurrency.split(",")), a.time_limit,
               a.server, a.max_wait_ms, cache_clips=a.cache_clips, rounds=a.rounds)
    print(table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
