"""`hafrm serve`: OpenRLHF's /get_reward and /score give hafrm's scores; bad requests get 4xx."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import hafrm
from hafrm.apps.cli import app as cli_app
from hafrm.apps.server import ServerSettings, create_app

PAIRS = [
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": [{"role": "user", "content": "Say hi."}], "response": "Hello there, nice to meet you!"},
    {"prompt": "Name three colours.", "response": "Red, green and blue."},
]


@pytest.fixture(scope="module")
def rm(tiny_rm_dir):
    return hafrm.load(tiny_rm_dir)


def _client(rm, **settings):
    return TestClient(create_app(rm, ServerSettings(**settings)))


def test_score_equals_hafrm_score_cli(rm, tiny_rm_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cli = CliRunner().invoke(cli_app, ["score", str(tiny_rm_dir), "--input", str(src)])
    assert cli.exit_code == 0, cli.output
    expected = [float(x) for x in cli.stdout.split()]
    with _client(rm) as c:
        r = c.post("/score", json={"pairs": PAIRS})
    assert r.status_code == 200 and r.json()["head"] == "reward"
    assert r.json()["scores"] == pytest.approx(expected, abs=1e-6)
    assert len(set(expected)) == 3


def test_get_reward_scores_formatted_queries_as_hafrm_does(rm):
    expected = rm.score_batch([p["prompt"] for p in PAIRS], [p["response"] for p in PAIRS])
    texts = [rm.tokenizer.decode(rm.encode(p["prompt"], p["response"]).ids) for p in PAIRS]
    assert all(t.endswith("<|im_end|>\n") for t in texts)
    pad = rm.tokenizer.pad_token
    variants = [
        texts,  # exactly as hafrm formats them
        [t.removesuffix("\n") for t in texts],  # cut at the eos, as a sampler stops
        [pad * 3 + t.removesuffix("<|im_end|>\n") + pad * 2 for t in texts],  # left- and right-padded decodes
    ]
    with _client(rm) as c:
        for query in variants:
            r = c.post("/get_reward", json={"query": query, "prompts": ["x"] * 3, "labels": [None] * 3})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["rewards"] == pytest.approx(expected, abs=1e-5)
            assert body["scores"] == body["rewards"] and body["extra_logs"] == {}


def test_normalize_uses_the_stored_statistics(rm, tokenizer, tmp_path):
    raw = rm.score_batch([PAIRS[0]["prompt"]], [PAIRS[0]["response"]])[0]
    with _client(rm, normalize=True) as c:
        got = c.post("/score", json={"pairs": PAIRS[:1]}).json()["scores"][0]
        assert c.get("/health").json()["normalize"] is True
    assert got == pytest.approx((raw - 0.25) / 2.0, abs=1e-6)  # the fixture's mean 0.25, std 2
    from helpers import save_tiny_reward_model

    bare = hafrm.load(save_tiny_reward_model(tmp_path / "bare", tokenizer, meta={"mode": "hybrid"}))
    with pytest.raises(hafrm.HafError, match="no reward statistics"):
        create_app(bare, ServerSettings(normalize=True))


def test_the_implicit_head_is_served_with_the_prompt_boundary(tokenizer, tiny_model_dir, tmp_path):
    from helpers import save_tiny_reward_model

    meta = {"mode": "dpo", "inference_head": "implicit", "beta": 0.1, "base_model": str(tiny_model_dir)}
    rm = hafrm.load(save_tiny_reward_model(tmp_path / "dpo", tokenizer, meta=meta))
    expected = rm.score_batch([p["prompt"] for p in PAIRS], [p["response"] for p in PAIRS])
    prompts, texts = [], []
    for p in PAIRS:
        ids, start = rm.encode(p["prompt"], p["response"])
        prompts.append(rm.tokenizer.decode(ids[:start]))
        texts.append(rm.tokenizer.decode(ids))
    with _client(rm) as c:
        assert c.get("/health").json()["head"] == "implicit"
        assert c.post("/score", json={"pairs": PAIRS}).json()["scores"] == pytest.approx(expected, abs=1e-4)
        r = c.post("/get_reward", json={"query": texts, "prompts": prompts})
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(expected, abs=1e-4)
        r = c.post("/get_reward", json={"query": texts})
        assert r.status_code == 422 and "needs `prompts`" in r.json()["detail"]
        r = c.post("/get_reward", json={"query": texts[:1], "prompts": ["something else"]})
        assert r.status_code == 422 and "does not start with prompts[0]" in r.json()["detail"]
    missing = save_tiny_reward_model(tmp_path / "gone", tokenizer, meta={**meta, "base_model": str(tmp_path / "x")})
    with pytest.raises(hafrm.HafError, match="reference model"):  # at start-up, not at the first request
        create_app(hafrm.load(missing), ServerSettings())
    with pytest.raises(hafrm.HafError, match="unknown head 'best'"):
        create_app(rm, ServerSettings(head="best"))


def test_bf16_serving_stays_close_to_fp32(rm):
    with _client(rm) as c:
        exact = c.post("/score", json={"pairs": PAIRS}).json()["scores"]
        assert c.get("/health").json()["precision"] == "fp32"
    with _client(rm, precision="bf16") as c:
        health = c.get("/health").json()
        fast = c.post("/score", json={"pairs": PAIRS}).json()["scores"]
    assert health["precision"] == "bf16" and health["max_batch_tokens"] == 1024  # the CPU default
    assert fast == pytest.approx(exact, abs=0.05 * max(1.0, max(abs(x) for x in exact)))
    assert fast != exact  # really computed in bf16
    with pytest.raises(hafrm.HafError, match="unknown precision"):
        create_app(rm, ServerSettings(precision="fp8"))


BAD = [
    ("/get_reward", b"{not json", 400, "not valid JSON"),
    ("/get_reward", b"[]", 422, "valid dictionary"),
    ("/get_reward", b"{}", 422, "query: Field required"),
    ("/get_reward", b'{"query": []}', 422, "at least 1 item"),
    ("/get_reward", b'{"query": "one text"}', 422, "valid list"),
    ("/get_reward", b'{"query": [3]}', 422, "valid string"),
    ("/score", b'{"pairs": [{"prompt": "x"}]}', 422, "response: Field required"),
    ("/score", b'{"pairs": [{"prompt": 5, "response": "y"}]}', 422, "prompt"),
    ("/score", b'{"pairs": [{"prompt": [{"role": "user"}], "response": "y"}]}', 422, "content: Field required"),
    ("/score", b'{"pairs": []}', 422, "at least 1 item"),
]


@pytest.mark.parametrize(("path", "body", "status", "reason"), BAD)
def test_malformed_requests_get_4xx_with_a_reason_and_the_server_lives(rm, path, body, status, reason):
    with _client(rm) as c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert reason in r.json()["detail"]
        assert c.post("/score", json={"pairs": PAIRS[:1]}).status_code == 200


def test_content_the_model_cannot_take_gets_4xx_and_a_model_failure_a_json_500(rm):
    pad = rm.tokenizer.pad_token
    with _client(rm, max_texts=4, max_chars=100) as c:
        r = c.post("/get_reward", json={"query": ["fine", pad * 3]})
        assert r.status_code == 422 and "query[1] is empty" in r.json()["detail"]
        r = c.post("/score", json={"pairs": [{"prompt": [], "response": "x"}]})
        assert r.status_code == 422
        big = b'{"query": ["' + b"a" * 10**7 + b'"]}'
        r = c.post("/get_reward", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
    strict = hafrm.load(rm.path)
    strict.tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with _client(strict) as c:
        r = c.post("/score", json={"pairs": PAIRS[:2]})
        assert r.status_code == 422 and "pairs[0]: the chat template rejects it" in r.json()["detail"]
    app = create_app(rm)
    batcher = app.state.service.batcher
    real = batcher.score_fn

    def broken(seqs, starts):
        raise RuntimeError("CUDA error: device-side assert")

    with TestClient(app) as c:
        batcher.score_fn = broken
        r = c.post("/score", json={"pairs": PAIRS[:1]})
        assert r.status_code == 500 and "RuntimeError: CUDA error" in r.json()["detail"]
        batcher.score_fn = real
        assert c.post("/score", json={"pairs": PAIRS[:1]}).status_code == 200  # the worker lives on
        assert c.get("/health").json()["ready"] is True
    assert c.app.state.service.batcher.alive is False  # closed with the app


def test_size_limits_answer_413(rm):
    with _client(rm, max_texts=2, max_chars=50) as c:
        r = c.post("/get_reward", json={"query": ["a", "b", "c"]})
        assert r.status_code == 413 and "at most 2" in r.json()["detail"]
        r = c.post("/get_reward", json={"query": ["a", "b" * 51]})
        assert r.status_code == 413 and "query[1] has 51 characters" in r.json()["detail"]
        r = c.post(
            "/score", json={"pairs": [{"prompt": [{"role": "user", "content": "q" * 40}], "response": "r" * 11}]}
        )
        assert r.status_code == 413 and "pairs[0]" in r.json()["detail"]


def test_api_key_is_enforced(rm):
    with _client(rm, api_key="s3cret") as c:
        assert c.post("/get_reward", json={"query": ["x"]}).status_code == 401
        wrong = c.post("/get_reward", json={"query": ["x"]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = c.post("/get_reward", json={"query": ["x"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # health and the OpenAPI page stay open
        assert "/get_reward" in c.get("/openapi.json").json()["paths"]


def _gate(app):
    """Make the app's scorer wait for `release` once it has started a forward (`entered`)."""
    batcher = app.state.service.batcher
    real = batcher.score_fn
    entered, release = threading.Event(), threading.Event()

    def gated(seqs, starts):
        entered.set()
        assert release.wait(20)
        return real(seqs, starts)

    batcher.score_fn = gated
    return batcher, entered, release


def test_a_full_queue_answers_503_and_a_slow_request_504(rm):
    app = create_app(rm, ServerSettings(max_queue_texts=2, timeout_s=30))
    batcher, entered, release = _gate(app)
    query = {"query": [t["response"] for t in PAIRS[:2]]}
    with TestClient(app) as c:
        results = {}
        first = threading.Thread(target=lambda: results.setdefault("first", c.post("/get_reward", json=query)))
        first.start()
        assert entered.wait(10)  # the first request is in the model
        second = threading.Thread(target=lambda: results.setdefault("second", c.post("/get_reward", json=query)))
        second.start()
        deadline = time.time() + 10
        while batcher.queued_texts < 2 and time.time() < deadline:
            time.sleep(0.01)
        full = c.post("/get_reward", json={"query": ["one more"]})
        assert full.status_code == 503 and "at most 2" in full.json()["detail"]
        assert full.headers["retry-after"] == "1"
        release.set()
        first.join(20)
        second.join(20)
        assert results["first"].status_code == results["second"].status_code == 200
        assert batcher.stats.forwards == 2
    slow = create_app(rm, ServerSettings(timeout_s=0.2))
    _, entered, release = _gate(slow)
    with TestClient(slow) as c:
        r = c.post("/get_reward", json={"query": ["x"]})
        release.set()
    assert r.status_code == 504 and "0.2 s" in r.json()["detail"]


def wait_for_health(base: str, proc: subprocess.Popen, seconds: float = 90) -> httpx.Response:
    deadline = time.time() + seconds
    while True:
        try:
            return httpx.get(f"{base}/health", timeout=2)
        except httpx.TransportError:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            assert time.time() < deadline, "the server did not answer in time"
            time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hafrm_serve_subprocess_answers_on_loopback_with_the_key_from_the_environment(rm, tiny_rm_dir):
    port = _free_port()
    env = {**os.environ, "HAFRM_API_KEY": "k3y"}
    cmd = [sys.executable, "-m", "hafrm.apps.cli", "serve", str(tiny_rm_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(base, proc)
        assert health.json()["ready"] is True and health.json()["head"] == "reward"
        texts = [rm.tokenizer.decode(rm.encode(p["prompt"], p["response"]).ids) for p in PAIRS]
        assert httpx.post(f"{base}/get_reward", json={"query": texts}).status_code == 401
        r = httpx.post(f"{base}/get_reward", json={"query": texts}, headers={"Authorization": "Bearer k3y"})
        expected = rm.score_batch([p["prompt"] for p in PAIRS], [p["response"] for p in PAIRS])
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(expected, abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(20)
