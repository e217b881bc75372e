"""``emoexp serve`` on loopback, driven by the ``openai`` client: the transformers engine in every run
(a tiny random model for the API, real SmolLM2 for the direction of the effect)."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import free_port

from emoexp import EmotionVectors
from emoexp.datasets import EMOTIONS

pytestmark = pytest.mark.slow

KEY = "sk-test-" + "x" * 20


class Server:
    """``emoexp serve``'s app under uvicorn in a thread of this process (the batcher is real)."""

    def __init__(self, args):
        import uvicorn

        from emoexp.serve import load_served
        from emoexp.serve.app import make_app

        self.served = load_served(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(make_app(self.served), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def client(self, key=KEY):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=300)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.served.batcher.close()


def _tiny_evs(path):
    from emoexp.models import inspect_model

    info = inspect_model("tiny-random-llama")
    g = torch.Generator().manual_seed(0)
    meta = {"site": "residual", "model_spec": "tiny-random-llama", "model_id": info.model_id,
            "model_fingerprint": info.fingerprint}
    EmotionVectors({e: torch.randn(2, 32, generator=g) * 3 for e in EMOTIONS}, meta).save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from emoexp.serve import Args

    path = _tiny_evs(tmp_path_factory.mktemp("serve") / "evs.safetensors")
    srv = Server(Args(vectors=str(path), api_key=KEY, max_tokens=32, default_max_tokens=12, batch_window_ms=50))
    yield srv
    srv.stop()


def _chat(client, emotions=None, centre=None, q="Tell me about your day.", **kw):
    extra = {}
    if emotions is not None:
        extra["emotions"] = emotions
    if centre is not None:
        extra["centre"] = centre
    return client.chat.completions.create(model="tiny-random-llama", messages=[{"role": "user", "content": q}],
                                          temperature=0, extra_body=extra or None, **kw)


def test_models_and_metadata_name_the_vectors(tiny):
    c = tiny.client()
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny-random-llama"]
    fp = tiny.served.evs.fingerprint()
    assert models[0].model_extra["emoexp"]["vectors_fingerprint"] == fp
    r = _chat(c, {"joy": 2})
    meta = r.model_extra["emoexp"]
    assert meta["vectors_fingerprint"] == fp and meta["emotions"] == {"joy": 2.0} and meta["engine"] == "transformers"
    assert r.choices[0].message.content and r.usage.completion_tokens <= 12


def test_concurrent_mixed_requests_equal_their_solo_replies(tiny):
    c = tiny.client()
    asks = [None, {"joy": 2}, {"anger": 3}, {"joy": 1, "anger": -0.5}, {"sadness": 2}, None, {"fear": -2}]
    centres = [None, None, True, None, True, None, None]
    before = tiny.served.batcher.batches
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda a: _chat(c, a[0], a[1], q=f"Question {a[2]}?").choices[0].message.content,
                                 [(e, ce, i % 3) for i, (e, ce) in enumerate(zip(asks, centres))]))
    shared = tiny.served.batcher.batches - before
    assert shared < len(asks), "the concurrent requests did not share batches"
    alone = [_chat(c, e, ce, q=f"Question {i % 3}?").choices[0].message.content
             for i, (e, ce) in enumerate(zip(asks, centres))]
    assert together == alone
    assert len({t for t, e in zip(together, asks) if e}) > 1  # emotions change the reply


def test_bad_requests_get_400_while_a_good_one_completes(tiny):
    import openai

    c = tiny.client()
    with ThreadPoolExecutor(1) as pool:
        good = pool.submit(lambda: _chat(c, {"joy": 1}, max_tokens=30))
        bad = {
            "unknown emotion": ({"emotions": {"glee": 1}}, "unknown emotion 'glee'"),
            "string alpha": ({"emotions": {"joy": "lots"}}, "joy must be a finite number"),
            "centre not bool": ({"emotions": {"joy": 1}, "centre": "yes"}, "centre: expected true or false"),
            "emotions not a map": ({"emotions": ["joy"]}, "emotions: expected an object"),
        }
        for extra, message in bad.values():
            with pytest.raises(openai.BadRequestError, match=message):
                c.chat.completions.create(model="tiny-random-llama", messages=[{"role": "user", "content": "hi"}],
                                          extra_body=extra)
        with pytest.raises(openai.BadRequestError, match="more than this server allows"):
            _chat(c, {"joy": 1}, max_tokens=100)
        with pytest.raises(openai.BadRequestError, match="greedily"):
            c.chat.completions.create(model="tiny-random-llama", messages=[{"role": "user", "content": "hi"}],
                                      temperature=0.7)
        with pytest.raises(openai.AuthenticationError, match="wrong API key"):
            _chat(tiny.client("sk-wrong"), {"joy": 1})
        assert good.result().choices[0].message.content
    # NaN: the openai client cannot send it; a raw HTTP body can
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "emotions": {"joy": math.nan}}).encode()
    req = urllib.request.Request(tiny.url + "/chat/completions", body, {"Authorization": f"Bearer {KEY}",
                                                                         "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code == 400 and "finite number" in json.loads(err.value.read())["error"]["message"]
    missing = urllib.request.Request(tiny.url + "/models")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(missing, timeout=60)
    assert err.value.code == 401 and "missing API key" in err.value.read().decode()
    assert _chat(c, {"joy": 1}).choices[0].message.content  # still serving


def test_streaming_returns_the_same_text(tiny):
    c = tiny.client()
    whole = _chat(c, {"anger": 2}).choices[0].message.content
    parts = [ch.choices[0].delta.content or "" for ch in _chat(c, {"anger": 2}, stream=True)]
    assert "".join(parts) == whole and len(parts) > 2
    done = c.completions.create(model="tiny-random-llama", prompt="Once upon a time", max_tokens=10, temperature=0,
                                extra_body={"emotions": {"joy": 2}})
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny-random-llama", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True,
        extra_body={"emotions": {"joy": 2}}))
    assert streamed == done.choices[0].text and done.model_extra["emoexp"]["emotions"] == {"joy": 2.0}


def test_vectors_of_another_model_are_refused_at_start(tmp_path, capsys):
    from emoexp.cli import main

    path = _tiny_evs(tmp_path / "evs.safetensors")
    assert main(["serve", str(path), "--model", "tiny-random-gpt2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emoexp serve: error:" in err[0], err


def test_emotions_change_smollm2_replies_in_the_intended_direction(tmp_path, smollm2):
    """Real SmolLM2 and a real joy EV: joy=+1 raises the scorer's P(joy) over unsteered and joy=-1."""
    from emoexp import score
    from emoexp.datasets import load_queries
    from emoexp.extraction import Accumulator, extract_batch, extraction_items, vectors_from
    from emoexp.models import inspect_model
    from emoexp.prompts import Conditioning, encode_prompts, render_prompt
    from emoexp.serve import Args

    model, tok = smollm2
    cond = Conditioning(strategy="prefill")
    items = extraction_items(load_queries("emotionquery", limit=4, emotions=["joy", "sadness"]), ["joy", "sadness"])
    texts = [render_prompt(tok, it.query.query, it.emotion if it.condition == "emotional" else None, cond)
             for it in items]
    sums, _ = extract_batch(model, tok, items, encode_prompts(tok, texts), site="attn", scope="response",
                            max_new_tokens=24)
    acc = Accumulator.empty(items, 30, 576)
    for k, s in sums.items():
        acc.add(k, s)
    evs, _ = vectors_from(acc, ["joy", "sadness"])
    info = inspect_model("smollm2")
    path = tmp_path / "evs.safetensors"
    EmotionVectors(evs, {"site": "attn", "model_spec": "smollm2", "model_id": info.model_id,
                         "model_fingerprint": info.fingerprint}).save(path)
    srv = Server(Args(vectors=str(path), default_max_tokens=32))
    try:
        c = srv.client(key="unused")
        qs = ["Describe your morning routine.", "What is a good way to organise a bookshelf?",
              "Tell me about the weather in spring.", "How do trains work?"]
        replies = {a: [c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": q}],
                                                 extra_body={"emotions": {"joy": a}} if a else None)
                       .choices[0].message.content for q in qs] for a in (-1.0, 0.0, 1.0)}
    finally:
        srv.stop()
    p = {a: score(t, metrics=["eps"])["p_joy"].mean() for a, t in replies.items()}
    assert p[1.0] > p[0.0] and p[1.0] > p[-1.0], (p, replies)
    assert all(a != b for a, b in zip(replies[0.0], replies[1.0]))


def test_an_mlflow_parent_run_serves_its_vectors_and_the_key_is_never_shown(tmp_path, monkeypatch, capsys):
    """`emoexp serve <run id>` fetches the run's vectors/ artifact; /v1/models names the run. The API key is
    stars in --print_config and absent from the start-up log."""
    from mlflow.tracking import MlflowClient

    from emoexp.cli import main
    from emoexp.serve import Args
    from emoexp.tracking import check_store, tracking_uri

    monkeypatch.chdir(tmp_path)
    uri = check_store(tracking_uri(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    client.log_artifact(run, str(_tiny_evs(tmp_path / "evs.safetensors")), "vectors")
    client.set_terminated(run)
    srv = Server(Args(vectors=run, default_max_tokens=4))
    try:
        meta = srv.client("unused").models.list().data[0].model_extra["emoexp"]
        assert meta["mlflow_run"] == run and meta["vectors"] == "vectors/evs.safetensors"
        assert "tracking_uri" not in meta
    finally:
        srv.stop()
    secret = "hunter2-" + "k" * 12
    assert main(["serve", run, "--api_key", secret, "--print_config"]) == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "api_key: '**********'" in out.out
    assert main(["serve", "0" * 32]) == 2
    assert "MLflow run " + "0" * 32 in capsys.readouterr().err
