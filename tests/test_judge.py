"""The LLM judge against a real HTTP server on loopback: valid, out-of-range, missing-key,
non-JSON, fenced, slow (timeout), failing and unreachable endpoints; the key never leaks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emoexp.eval.judge import (
    REJECTED_LIMIT,
    JudgeConfig,
    JudgeError,
    JudgeUnavailableError,
    get_judge,
    parse_scores,
    rate_emotions,
    rate_topic,
)
from emoexp.eval.judge import JudgeReplyError as ReplyError

KEY = "sk-test-SECRET-0123456789"
VALID = {"anger": 10, "disgust": 0, "fear": 5, "joy": 90, "sadness": 0}


class Server:
    """A scripted OpenAI-compatible server: each request pops the next action.

    An action is a dict (sent as the assistant's JSON content), a str (sent as raw content),
    ``("status", code)``, ``("sleep", seconds)``, ``("raw", bytes)`` (the whole HTTP body), or a
    function of the request body returning one of the first two.
    When the script runs out, the last action repeats.
    """

    def __init__(self, actions):
        self.actions = list(actions)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                action = outer.actions.pop(0) if len(outer.actions) > 1 else outer.actions[0]
                if callable(action):
                    action = action(body)
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = VALID
                if isinstance(action, tuple) and action[0] == "status":
                    payload = f"error; your key was {self.headers.get('Authorization')}".encode()
                    self.send_response(action[1])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if isinstance(action, tuple) and action[0] == "raw":
                    payload = action[1]
                else:
                    content = action if isinstance(action, str) else json.dumps(action)
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def config(url: str, **kw) -> JudgeConfig:
    """One request at a time unless asked: the scripted servers answer in arrival order."""
    return JudgeConfig(**{"base_url": url, "model": "judge-model", "api_key": KEY, "timeout": 2.0,
                          "max_retries": 2, "concurrency": 1, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_valid_reply_and_request_shape():
    with Server([VALID]) as srv:
        r = rate_emotions(get_judge("judge", config(srv.url)), ["Yay, I won!"])[0]
    assert r.scores == {k: float(v) for k, v in VALID.items()}
    assert (r.clamped, r.tries, r.error) == (False, 1, None)
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "judge-model"
    fmt = req["body"]["response_format"]  # a JSON schema of exactly the five number fields
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["anger", "disgust", "fear", "joy", "sadness"]
    assert schema["additionalProperties"] is False and {p["type"] for p in schema["properties"].values()} == {"number"}
    assert "Yay, I won!" in req["body"]["messages"][-1]["content"]


def test_json_modes():
    with Server([{"topic": 50}]) as srv:
        rate_topic(get_judge("judge", config(srv.url)), ["q"], ["r"])
        rate_topic(get_judge("judge", config(srv.url, json_mode="object")), ["q"], ["r"])
        rate_topic(get_judge("judge", config(srv.url, json_mode=False)), ["q"], ["r"])
    topic, obj, off = (r["body"] for r in srv.requests)
    assert topic["response_format"]["json_schema"]["schema"]["required"] == ["topic"]
    assert obj["response_format"] == {"type": "json_object"} and "response_format" not in off
    with pytest.raises(JudgeError, match="json_mode must be"):
        config("http://127.0.0.1:1/v1", json_mode="yaml")


def test_out_of_range_is_clamped_and_flagged():
    with Server([{**VALID, "joy": 140, "anger": -3}]) as srv:
        r = rate_emotions(get_judge("judge", config(srv.url)), ["x"])[0]
    assert r.scores["joy"] == 100.0 and r.scores["anger"] == 0.0 and r.clamped


@pytest.mark.parametrize("bad, reason", [
    ({"anger": 1, "disgust": 2, "fear": 3, "joy": 4}, "lacks ['sadness']"),
    ("Sure! The text is joyful.", "not JSON"),
    ({**VALID, "joy": "high"}, "not a finite number"),
    ([1, 2, 3], "not an object"),
])
def test_invalid_replies_are_retried_then_recorded(bad, reason):
    with Server([bad]) as srv:  # always invalid
        r = rate_emotions(get_judge("judge", config(srv.url, max_retries=2)), ["x"])[0]
    assert r.scores is None and r.tries == 3 and reason in r.error
    assert len(srv.requests) == 3
    # The retry shows the model its reply and asks again.
    assert srv.requests[1]["body"]["messages"][-1]["role"] == "user"
    assert srv.requests[1]["body"]["messages"][-2]["role"] == "assistant"


def test_invalid_then_valid_reply_recovers():
    with Server(["not json", VALID]) as srv:
        r = rate_emotions(get_judge("judge", config(srv.url)), ["x"])[0]
    assert r.scores is not None and r.tries == 2 and r.error is None


def test_fenced_json_is_accepted_but_prose_around_it_is_not():
    assert parse_scores('```json\n{"topic": 55}\n```', ["topic"]) == ({"topic": 55.0}, False)
    with pytest.raises(ReplyError):
        parse_scores('Here you go: {"topic": 55}', ["topic"])
    with pytest.raises(ReplyError):
        parse_scores('{"topic": true}', ["topic"])


def test_http_500_is_retried():
    with Server([("status", 500), VALID]) as srv:
        r = rate_emotions(get_judge("judge", config(srv.url)), ["x"])[0]
    assert r.scores is not None and len(srv.requests) == 2


def test_slow_server_times_out_with_clear_error_and_keeps_finished_ratings():
    with Server([VALID, ("sleep", 1.5)]) as srv:
        judge = get_judge("judge", config(srv.url, timeout=0.3, max_retries=1))
        t = time.time()
        with pytest.raises(JudgeUnavailableError) as ei:
            rate_emotions(judge, ["first", "second", "third"])
        elapsed = time.time() - t
    assert "timed out" in str(ei.value) and "unreachable after 2 tries" in str(ei.value)
    assert len(ei.value.completed) == 1 and ei.value.completed[0].scores is not None
    assert elapsed < 3.0
    assert KEY not in str(ei.value)


def test_concurrent_requests_keep_the_prompts_order_and_overlap():
    """With concurrency 8 the replies, each computed from its own text, come back in the texts'
    order; the requests overlap (a serving engine batches them); a reply that is prose is retried
    for that text alone."""
    lock, live = threading.Lock(), {"now": 0, "peak": 0}
    texts = [f"text number {i}" for i in range(24)]

    def reply(body):
        with lock:
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])
        time.sleep(0.05)
        with lock:
            live["now"] -= 1
        i = _number(body)
        if i == 5 and len(body["messages"]) == 2:
            return "prose, not JSON"  # the first try of text 5 only
        return {"anger": i, "disgust": 0, "fear": 0, "joy": 100 - i, "sadness": 0}

    with Server([reply]) as srv:
        ratings = rate_emotions(get_judge("judge", config(srv.url, concurrency=8)), texts)
    assert [r.scores["anger"] for r in ratings] == list(range(24))
    assert [r.tries for r in ratings] == [2 if i == 5 else 1 for i in range(24)]
    assert live["peak"] > 1 and len(srv.requests) == 25


def _number(body) -> int:
    return int(body["messages"][1]["content"].split("text number ")[1].split()[0])


def test_concurrent_failure_keeps_the_finished_prefix():
    """A judge that starts refusing the key mid-way: the error carries the ratings of the first
    texts that finished, in order, and none after a gap."""
    def reply(body):
        i = _number(body)
        return ("status", 403) if i >= 6 else {**VALID, "anger": i}

    with Server([reply]) as srv, pytest.raises(JudgeError) as ei:
        rate_emotions(get_judge("judge", config(srv.url, concurrency=4)), [f"text number {i}" for i in range(12)])
    assert "rejected" in str(ei.value)
    assert [r.scores["anger"] for r in ei.value.completed] == list(range(len(ei.value.completed)))
    assert len(ei.value.completed) <= 6


def test_a_refused_text_is_recorded_and_the_others_go_on():
    """HTTP 400 for one text (e.g. longer than the judge's context) is that text's failure, asked
    once; only when the first REJECTED_LIMIT texts are all refused is the request itself wrong."""
    def reply(body):
        return ("status", 400) if _number(body) == 3 else {**VALID, "anger": _number(body)}

    with Server([reply]) as srv:
        ratings = rate_emotions(get_judge("judge", config(srv.url, concurrency=4)),
                                [f"text number {i}" for i in range(10)])
        assert len(srv.requests) == 10  # not retried
    assert ratings[3].scores is None and ratings[3].rejected and "HTTP 400" in ratings[3].error
    assert [r.scores["anger"] for i, r in enumerate(ratings) if i != 3] == [i for i in range(10) if i != 3]
    with Server([("status", 400)]) as srv:
        with pytest.raises(JudgeError) as ei:
            rate_emotions(get_judge("judge", config(srv.url, concurrency=2)), [f"t{i}" for i in range(50)])
        assert len(srv.requests) < 20  # stopped after the first refusals, not all 50
    assert f"rejected the first {REJECTED_LIMIT} requests" in str(ei.value) and KEY not in str(ei.value)


def test_unreachable_judge_raises_clear_error_without_key():
    url = f"http://user:pw@127.0.0.1:{free_port()}/v1"
    with pytest.raises(JudgeUnavailableError) as ei:
        rate_topic(get_judge("judge", config(url, max_retries=1)), ["q"], ["r"])
    msg = str(ei.value)
    assert "unreachable" in msg and "127.0.0.1" in msg
    assert KEY not in msg and "pw" not in msg


def test_rejected_request_error_hides_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    with Server([("status", 401)]) as srv:  # the server echoes the Authorization header
        judge = get_judge("judge", config(srv.url))
        with pytest.raises(JudgeError) as ei:
            rate_emotions(judge, ["x"])
    assert "HTTP 401" in str(ei.value)
    assert KEY not in str(ei.value) and "***" in str(ei.value)
    assert KEY not in repr(judge) and KEY not in repr(judge.config) and KEY not in str(judge.describe())
    assert KEY not in caplog.text


def test_topic_rating_and_env_config(monkeypatch):
    with Server([{"topic": 80}]) as srv:
        monkeypatch.setenv("EMOEXP_JUDGE_BASE_URL", srv.url)
        monkeypatch.setenv("EMOEXP_JUDGE_MODEL", "m")
        monkeypatch.setenv("EMOEXP_JUDGE_API_KEY", KEY)
        cfg = JudgeConfig.from_env(timeout=2.0)
        r = rate_topic(get_judge("judge", cfg), ["How do I bake bread?"], ["Knead the dough."])[0]
    assert r.scores == {"topic": 80.0}
    assert srv.requests[0]["auth"] == f"Bearer {KEY}"
    monkeypatch.delenv("EMOEXP_JUDGE_BASE_URL")
    with pytest.raises(JudgeError, match="EMOEXP_JUDGE_BASE_URL"):
        JudgeConfig.from_env()


def test_long_text_is_cut_and_flagged():
    with Server([VALID]) as srv:
        r = rate_emotions(get_judge("judge", config(srv.url, max_chars=50)), ["word " * 100])[0]
    assert r.truncated and len(srv.requests[0]["body"]["messages"][-1]["content"]) < 700


def test_score_keeps_finished_scores_when_the_judge_dies():
    from emoexp.eval import ScoringInterrupted, score

    with Server([VALID, VALID, ("status", 503)]) as srv, pytest.raises(ScoringInterrupted) as ei:
        score(["I love it!", "so so so so so so", "", "Great news!"], metrics=["repetition", "eas"],
              backend={"eas": "judge", "judge": config(srv.url, max_retries=1)})
    df = ei.value.partial
    assert len(df) == 4
    assert df["repetition"].notna().tolist() == [True, True, False, True]  # finished metric kept
    assert df["eas_joy"].notna().tolist() == [True, True, False, False]  # two judged before it died
    assert "judge failed (JudgeUnavailableError)" in df.loc[3, "issues"] and df.loc[2, "issues"] == "empty response"
    assert "2 of 3 scored" in str(ei.value) and KEY not in str(ei.value)


def test_score_with_judge_records_backend_and_topic_scale():
    from emoexp.eval import score

    with Server([{"topic": 70}]) as srv:
        df = score(["Knead the dough."], ["How do I bake bread?"], metrics=["topic"],
                   backend={"topic": "judge", "judge": config(srv.url)})
    assert df.loc[0, "topic"] == pytest.approx(0.70)
    assert df.loc[0, "topic_backend"] == "llm-judge:judge-model"
    assert KEY not in df.to_json() and KEY not in json.dumps(df.attrs, default=str)


def test_local_hf_judge_code_path(monkeypatch):
    from emoexp.eval import score
    from emoexp.eval.judge import LocalJudge

    judge = LocalJudge("tiny-random-llama", max_new_tokens=4, max_retries=1)
    r = rate_emotions(judge, ["I am happy"])[0]  # random weights: never valid JSON
    assert r.scores is None and r.tries == 2 and "not JSON" in r.error
    monkeypatch.setattr(LocalJudge, "complete", lambda self, messages: json.dumps({**VALID, "fear": 101}))
    df = score(["I am happy"], metrics=["eas"], backend={"eas": "hf:tiny-random-llama"})
    assert df.loc[0, "eas_joy"] == 90.0 and df.loc[0, "eas_fear"] == 100.0
    assert df.loc[0, "eas_backend"] == "hf-judge:tiny-random-llama"
    assert "clamped" in df.loc[0, "issues"]


def test_score_keeps_finished_scores_when_the_judge_rejects_the_key():
    from emoexp.eval import ScoringInterrupted, score

    with Server([("status", 401)]) as srv, pytest.raises(ScoringInterrupted) as ei:
        score(["Nice!", "Fine."], ["How are you?"] * 2, metrics=["repetition", "topic"],
              backend={"topic": "judge", "judge": config(srv.url)})
    df = ei.value.partial
    assert df["repetition"].notna().all() and df["topic"].isna().all()
    assert "HTTP 401" in str(ei.value) and KEY not in str(ei.value)
    assert df.loc[0, "topic_backend"] == "llm-judge:judge-model"
