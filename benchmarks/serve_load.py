"""`hafrm serve` under load: 1,000 requests on loopback, batched server against one-at-a-time, as JSON.

    python benchmarks/serve_load.py --model-dir runs/main --out serve_load.json

Starts `hafrm serve` as a subprocess on a free loopback port, twice: with its micro-batching (the
default) and with `--no-batching` (each request scored alone, as OpenRLHF's own reward server
does). Each gets the same seeded mix of requests, sent with at most `--concurrency` in flight:
80 % to OpenRLHF's `/get_reward` with formatted texts, the rest to `/score`, over the built-in
task's prompts and responses, with 1-16 texts a request (`--sizes 1`: one each, as OpenRLHF's
rollouts send them). Reports failures, requests/s,
texts/s, p50/p90/p99 latency, the throughput ratio, and how far the two servers' scores for the
same texts differ. Without `--model-dir` it serves the embedded SmolLM2 with a random reward head
(throughput does not depend on the head's weights). Every phase stops by itself at `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import hafrm
from hafrm.config import HafConfig
from hafrm.data.sources import builtin_pairs


def workload(rm: hafrm.RewardModel, n: int, seed: int, sizes: list[int]) -> list[tuple[str, dict, int]]:
    """(path, JSON body, texts) per request: /get_reward with formatted texts, or /score; each
    request's size drawn from `sizes`."""
    rng = random.Random(seed)
    pairs = builtin_pairs(HafConfig())
    out = []
    for _ in range(n):
        k = rng.choice(sizes)
        chosen = rng.sample(pairs, k)
        items = [(p.prompt, rng.choice([p.chosen, p.rejected])) for p in chosen]
        if rng.random() < 0.8:
            query = [rm.tokenizer.decode(rm.encode(q, r).ids).removesuffix("\n") for q, r in items]
            out.append(("/get_reward", {"query": query, "prompts": [""] * k, "labels": [None] * k}, k))
        else:
            out.append(("/score", {"pairs": [{"prompt": q, "response": r} for q, r in items]}, k))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, batching: bool, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "hafrm.apps.cli", "serve", str(model_dir), "--port", str(port), *extra]
    cmd += [] if batching else ["--no-batching"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the server did not start (exit {proc.poll()})")


async def send_all(url: str, requests: list, concurrency: int, max_seconds: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    latencies, statuses, scores = [], {}, [None] * len(requests)
    began = time.perf_counter()

    async def one(i: int, client: httpx.AsyncClient) -> None:
        path, body, _ = requests[i]
        async with gate:
            if time.perf_counter() - began > max_seconds:
                statuses["not sent (time limit)"] = statuses.get("not sent (time limit)", 0) + 1
                return
            t = time.perf_counter()
            try:
                r = await client.post(url + path, json=body)
                code = str(r.status_code)
                if r.status_code == 200:
                    data = r.json()
                    scores[i] = data["rewards"] if path == "/get_reward" else data["scores"]
            except httpx.HTTPError as e:
                code = type(e).__name__
            latencies.append(time.perf_counter() - t)
            statuses[code] = statuses.get(code, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        await asyncio.gather(*(one(i, client) for i in range(len(requests))))
    wall = time.perf_counter() - began
    ok = [i for i, s in enumerate(scores) if s is not None]
    texts = sum(requests[i][2] for i in ok)
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {
        "requests": len(requests),
        "ok": len(ok),
        "failures": len(requests) - len(ok),
        "statuses": statuses,
        "texts": texts,
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "texts_per_s": texts / wall,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": 1000 * lat[-1] if lat else None},
        "_scores": scores,
    }


def run_phase(model_dir: Path, batching: bool, requests: list, args) -> dict:
    proc, url = start_server(model_dir, batching, args.server_args.split())
    try:
        result = asyncio.run(send_all(url, requests, args.concurrency, args.max_seconds))
        health = httpx.get(f"{url}/health", timeout=10).json()
        result["server"] = health["scored"] | {k: health[k] for k in ("precision", "device", "max_batch_tokens")}
    finally:
        proc.terminate()
        proc.wait(30)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--baseline-requests", type=int, default=1000, help="Requests to the one-at-a-time server.")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=600, help="Per phase; requests not sent by then are counted.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sizes", default="1,1,1,1,2,4,8,16", help="Texts per request, drawn uniformly from this list ('1': OpenRLHF)."
    )
    ap.add_argument("--server-args", default="", help="More `hafrm serve` options for both, e.g. '--precision bf16'.")
    ap.add_argument("--out", type=Path, default=Path("serve_load.json"))
    args = ap.parse_args()
    tmp = None
    model_dir = args.model_dir
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = Path(tmp.name) / "smollm2-random-head"
        from hafrm.modeling.backbone import load_backbone
        from hafrm.modeling.hybrid import HybridRewardModel

        backbone = load_backbone("smollm2")
        tokenizer = backbone.tokenizer
        model = HybridRewardModel(backbone.model)
        torch.nn.init.normal_(model.reward_head.weight, std=0.05)
        model.save_pretrained(model_dir, model_card={"mode": "hybrid", "inference_head": "reward"})
        tokenizer.save_pretrained(model_dir)
    rm = hafrm.load(model_dir)
    sizes = [int(x) for x in args.sizes.split(",")]
    requests = workload(rm, max(args.requests, args.baseline_requests), args.seed, sizes)
    del rm
    report = {
        "model_dir": str(args.model_dir or "embedded SmolLM2, random reward head"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln), None)
        if os.path.exists("/proc/cpuinfo")
        else None,
        "torch_threads": torch.get_num_threads(),
        "concurrency": args.concurrency,
        "sizes": sizes,
        "server_args": args.server_args,
    }
    batched = run_phase(model_dir, True, requests[: args.requests], args)
    alone = run_phase(model_dir, False, requests[: args.baseline_requests], args)
    common = [
        (a, b)
        for a, b in zip(batched.pop("_scores"), alone.pop("_scores"), strict=False)
        if a is not None and b is not None
    ]
    diffs = [abs(x - y) for a, b in common for x, y in zip(a, b, strict=True)]
    report |= {
        "batched": batched,
        "one_at_a_time": alone,
        "ratio/texts_per_s": batched["texts_per_s"] / alone["texts_per_s"],
        "ratio/requests_per_s": batched["requests_per_s"] / alone["requests_per_s"],
        "scores_max_abs_diff": max(diffs) if diffs else None,  # the same texts, batched with others or alone
        "scores_compared": len(diffs),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("batched", "one_at_a_time"):
        r = report[name]
        print(f"{name}: {r['ok']}/{r['requests']} ok, {r['requests_per_s']:.1f} req/s, {r['texts_per_s']:.1f} texts/s, "
              f"p50 {r['latency_ms']['p50']:.0f} ms, p99 {r['latency_ms']['p99']:.0f} ms")  # fmt: skip
    print(f"batched / one-at-a-time: {report['ratio/texts_per_s']:.2f}x texts/s; scores differ by at most "
          f"{report['scores_max_abs_diff']}; wrote {args.out}")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
