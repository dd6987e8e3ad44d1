"""Best-of-N: picks, top-k recall and win rates by hand; the chat judge against a stub server; the
command end to end on tiny models."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from typer.testing import CliRunner

from hafrm.apps.cli import app
from hafrm.evaluation import bon

runner = CliRunner()


def test_picks_recall_and_win_rate_by_hand():
    grouped = [[0, 1, 2], [3, 4, 5]]
    scores = [0.1, 0.9, 0.9, 2.0, 1.0, 3.0]
    picked = bon.picks(scores, grouped)
    assert picked == [1, 5]  # a tie goes to the first candidate
    judge = [3.0, 2.0, 1.0, 0.0, 1.0, 2.0]  # judge ranks: prompt 0: 0 > 1 > 2; prompt 1: 5 > 4 > 3
    assert bon.topk_recall(picked, judge, grouped, 1) == 0.5
    assert bon.topk_recall(picked, judge, grouped, 2) == 1.0
    other = [0, 5]
    assert bon.win_rate(picked, other, lambda i: judge[i]) == pytest.approx((0.0 + 0.5) / 2)


def test_topk_recall_counts_a_tie_across_the_cut_by_its_chance():
    grouped = [[0, 1, 2, 3]]
    judge = [5.0, 2.0, 2.0, 2.0]  # the pick (1) shares 2nd place with two others
    assert bon.topk_recall([1], judge, grouped, 1) == 0.0
    assert bon.topk_recall([1], judge, grouped, 2) == pytest.approx(1 / 3)
    assert bon.topk_recall([1], judge, grouped, 3) == pytest.approx(2 / 3)
    assert bon.topk_recall([1], judge, grouped, 4) == 1.0
    assert bon.topk_recall([0], judge, grouped, 1) == 1.0


class _Judge(BaseHTTPRequestHandler):
    mode = "content"  # "content": prefers the response with "good"; "first": always says A; "chat": prose

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        a = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        answer = "A" if self.mode == "first" or "good" in a else "B"
        if self.mode == "chat":
            answer = "Both are fine."
        payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_chat_judge_asks_both_orders(judge_server):
    judge = bon.ChatJudge(judge_server, "stub")
    _Judge.mode = "content"
    assert judge.compare("q", "a good answer", "a bad one") == 1.0
    assert judge.compare("q", "a bad one", "a good answer") == 0.0
    _Judge.mode = "first"  # a judge that always prefers the first position decides nothing
    assert judge.compare("q", "a good answer", "a bad one") == 0.5
    _Judge.mode = "chat"  # a reply that is neither letter: a tie, counted
    assert judge.compare("q", "a good answer", "a bad one") == 0.5
    _Judge.mode = "content"
    assert judge.compare("q", "same", "same") == 0.5
    assert judge.counts == {"comparisons": 5, "same_response": 1, "unparsed_replies": 2, "orders_disagree": 1}


def test_chat_judge_unreachable_is_a_hafrm_error():
    with pytest.raises(bon.HafError, match="judge http://127.0.0.1:9/v1/chat/completions"):
        bon.ChatJudge("http://127.0.0.1:9/v1", "stub", timeout=2).compare("q", "x", "y")


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    from hafrm.config import HafConfig
    from hafrm.training.recipe import train

    out = tmp_path_factory.mktemp("bon-models")
    for mode in ("reward", "hybrid"):
        train(HafConfig(model=str(tiny_model_dir), mode=mode, freeze_layers=0, builtin_pairs=24, max_steps=2,
                        per_device_train_batch_size=4, output_dir=str(out / mode)))  # fmt: skip
    return out


def test_bon_end_to_end_gold_and_judge_model(two_models, tiny_model_dir, tmp_path, judge_server, monkeypatch):
    out = tmp_path / "bon"
    args = ["bon", f"reward={two_models / 'reward'}", f"haf={two_models / 'hybrid'}", "--output-dir", str(out),
            "--policy", str(tiny_model_dir), "--num-prompts", "4", "--n", "3", "--temperatures", "0.7,1.2",
            "--max-new-tokens", "6", "--judge", str(two_models / "hybrid"), "--judge-url", judge_server]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bon.json").read_text())
    assert report["prompts"] == 4 and report["candidates"] == 12
    assert set(report["methods"]) == {"reward", "haf", "random"}
    for m in report["methods"].values():
        assert 0 <= m["gold_correct"] <= 1 and set(m["top_k_recall"]) == {"1", "2", "3"}
        assert m["top_k_recall"]["3"] == 1.0  # every pick is among a prompt's 3 candidates
    assert report["methods"]["haf"]["top_k_recall"]["1"] == 1.0  # the judge is the haf model itself
    assert set(report["win_rates"]["reward vs haf"]) == {"gold", "judge_model", "chat_judge"}
    assert report["chat_judge"]["comparisons"] == 3 * 4  # three pairs of methods, four prompts each
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert sorted({c["temperature"] for c in candidates}) == [0.7, 1.2] and all("gold" in c for c in candidates)
    # a rerun reuses the candidates (no generation)
    monkeypatch.setattr(bon, "generate_candidates", lambda *a, **k: pytest.fail("candidates regenerated"))
    again = runner.invoke(app, args[:-4])
    assert again.exit_code == 0, again.output


def test_bon_missing_model_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["bon", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output
    for run in ("a", "b"):
        (tmp_path / run / "model").mkdir(parents=True)
    # two folders of one name (runs/a/model, runs/b/model): refused, not one silently dropped
    twice = runner.invoke(app, ["bon", str(tmp_path / "a" / "model"), str(tmp_path / "b" / "model"),
                                "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert twice.exit_code == 2 and "the name 'model' is taken" in twice.output, twice.output
