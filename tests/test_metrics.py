"""Each metric module separates what it should on hand-written text, and loads by local path."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from emoexp.metrics import METRICS, load_metric, metric_path

EMOTION_TEXTS = {
    "anger": "I am furious! How dare they lie to me again, I want to scream at them.",
    "disgust": "Ugh, that smell is revolting, I nearly threw up. Gross.",
    "fear": "I'm terrified, my heart is pounding and I can't stop shaking.",
    "joy": "I'm so happy! This is the best day of my life!",
    "sadness": "I feel so lonely and heartbroken since she left; I can't stop crying.",
}
NEUTRAL_TEXT = "The meeting is scheduled for 3 pm in room 204."
LABELS = ["anger", "disgust", "fear", "joy", "sadness", "neutral"]


def test_every_metric_ships_as_a_local_module():
    for name in METRICS:
        assert (metric_path(name) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("bleu")


def test_load_metric_uses_the_local_path_and_falls_back_without_a_writable_cache(monkeypatch):
    import evaluate

    seen = []
    real = evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda path, **kw: seen.append(path) or real(path, **kw))
    load_metric.cache_clear()
    try:
        m = load_metric("repetition")
        assert seen == [str(metric_path("repetition"))]
        assert m.compute(predictions=["a b"])["repetition"] == [0.0]

        def read_only(path, **kw):
            raise PermissionError("read-only HF_HOME")

        monkeypatch.setattr(evaluate, "load", read_only)
        load_metric.cache_clear()
        m = load_metric("repetition")
        assert isinstance(m, evaluate.Metric)
        assert m.compute(predictions=["a b a b a b"])["repetition"] == pytest.approx([1 / 3])
    finally:
        load_metric.cache_clear()


def test_repetition_counts_looping_text():
    out = load_metric("repetition").compute(predictions=[
        "a b a b a b", "The quick brown fox jumps over the lazy dog.", "so " * 30, "hi there",
    ])
    assert out["repetition"][0] == pytest.approx(1 / 3)  # 3 four-grams, 2 distinct
    assert out["distinct_1"][0] == pytest.approx(2 / 6) and out["distinct_2"][0] == pytest.approx(2 / 5)
    assert out["repetition"][1] == 0.0 and out["distinct_2"][1] == 1.0
    assert out["repetition"][2] > 0.9  # degenerate loop
    assert out["repetition"][3] == 0.0 and out["distinct_2"][3] == 1.0  # no 4-gram: nothing repeated


def test_repetition_short_text_has_no_ngrams():
    out = load_metric("repetition").compute(predictions=["hi"])
    assert out["repetition"] == [0.0] and out["distinct_1"] == [1.0] and math.isnan(out["distinct_2"][0])


@pytest.mark.parametrize("backend", ["minilm-smollm2", "minilm", "minilm-written", "minilm-zeroshot", "minilm-ensemble", "minilm-proto"])
def test_eps_separates_each_emotion_from_neutral(backend):
    out = load_metric("eps").compute(predictions=[*EMOTION_TEXTS.values(), NEUTRAL_TEXT], backend=backend)
    assert out["labels"] == LABELS and out["config"]["backend"] == backend
    assert out["config"]["fingerprint"].startswith(f"{backend}@")
    assert out["config"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    p = np.array(out["probabilities"])
    assert np.allclose(p.sum(1), 1.0)
    neutral = p[-1]
    for k, emotion in enumerate(EMOTION_TEXTS):
        assert p[k, :5].argmax() == k, f"{emotion} text classified as {LABELS[p[k, :5].argmax()]}"
        assert p[k, k] > neutral[k] + 0.2
        assert out["intensity"][k] > out["intensity"][-1]
    assert out["intensity"] == pytest.approx(list(1 - p[:, -1]))


def test_eps_flags_truncated_text():
    # the default scorer reads text with loops cut (eval/normalise.py): a loop of one word is short to it
    long = " ".join(f"word{i}" for i in range(400))
    out = load_metric("eps").compute(predictions=["short", long, "word " * 400])
    assert out["truncated"] == [False, True, False]
    assert load_metric("eps").compute(predictions=["word " * 400], backend="minilm-written")["truncated"] == [True]


def test_encoder_windows_read_the_whole_text():
    import torch

    from emoexp.eval.encoders import TextEncoder

    short = ["I am so happy today!", "What time is it?", ""]
    long_a = " ".join(f"word{i}" for i in range(300)) + " I am terrified."
    long_b = " ".join(f"word{i}" for i in range(300)) + " I am delighted."
    cut, win = TextEncoder("minilm", max_length=128), TextEncoder("minilm", max_length=128, window=128, max_windows=16)
    # a text inside one window reads as it does truncated: exactly
    assert torch.equal(cut.encode(short).embeddings, win.encode(short).embeddings)
    # truncation never sees the last words; windows do (and cover them, so nothing is flagged)
    c, w = cut.encode([long_a, long_b]), win.encode([long_a, long_b])
    assert torch.equal(c.embeddings[0], c.embeddings[1]) and c.truncated == [True, True]
    assert not torch.allclose(w.embeddings[0], w.embeddings[1]) and w.truncated == [False, False]
    assert torch.linalg.vector_norm(w.embeddings, dim=1) == pytest.approx([1.0, 1.0])
    # batching does not change a text's embedding; past max_windows the rest is cut and flagged
    assert torch.allclose(TextEncoder("minilm", window=128, batch_size=1).encode([long_a]).embeddings[0],
                          w.embeddings[0], atol=1e-6)
    few = TextEncoder("minilm", window=128, max_windows=2).encode([long_a, long_b])
    assert few.truncated == [True, True] and torch.equal(few.embeddings[0], few.embeddings[1])
    with pytest.raises(ValueError, match="window must be"):
        TextEncoder("minilm", window=2)


def test_tec_from_probabilities():
    probs = [[0.1, 0.05, 0.05, 0.3, 0.1, 0.4]] * 3
    out = load_metric("tec").compute(predictions=probs, references=["joy", "anger", ""], labels=LABELS)
    assert out["tec"][:2] == pytest.approx([0.3, 0.1]) and math.isnan(out["tec"][2])
    assert out["tec_top"][:2] == [1.0, 0.0]  # neutral (0.4) does not count for "top"


def test_topic_separates_on_and_off_topic_at_the_same_tone():
    q = "How do I bake sourdough bread at home?"
    on_calm = "Mix flour, water, salt and starter, let the dough rise overnight, then bake it at 230 °C."
    off_calm = "Check the tyre pressure of your car once a month and before long trips."
    on_angry = "Ugh, my sourdough never rises! I mixed the flour and starter and baked the stupid loaf for nothing!"
    off_angry = "Ugh, my car tyres are flat again! I checked the stupid pressure for nothing!"
    t = load_metric("topic_consistency").compute(predictions=[on_calm, off_calm, on_angry, off_angry],
                                                 references=[q] * 4)["topic"]
    assert t[0] > t[1] + 0.2 and t[2] > t[3] + 0.2


def test_perplexity_separates_fluent_from_shuffled_text():
    fluent = ["The cat sat on the mat and watched the birds outside the window.",
              "I went to the store yesterday to buy some bread and milk for breakfast."]
    shuffled = []
    for s in fluent:
        words = s.split()
        random.Random(0).shuffle(words)
        shuffled.append(" ".join(words))
    out = load_metric("perplexity").compute(predictions=fluent + shuffled, model_id="smollm2")
    ppl = out["perplexities"]
    assert out["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for k in range(2):
        assert ppl[k] * 5 < ppl[k + 2]


def test_perplexity_batching_truncation_and_counts():
    from emoexp.eval.perplexity import ReferenceLM

    lm = ReferenceLM("tiny-random-llama", max_length=16, batch_size=4)
    texts = ["hello world", "a much longer sentence " * 10, "x"]
    batched = lm.perplexity(texts)
    single = [lm.perplexity([t]).values[0] for t in texts]
    assert np.allclose(batched.values, single, rtol=1e-4)
    assert batched.truncated == [False, True, False]
    assert batched.n_tokens[1] == 15 and batched.n_tokens[0] == len(lm.tokenizer("hello world")["input_ids"])


def test_perplexity_batches_keep_the_logits_under_budget(monkeypatch):
    from emoexp.eval import perplexity as ppl

    lm = ppl.ReferenceLM("tiny-random-llama", max_length=64, batch_size=8)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(ppl, "LOGITS_BUDGET", vocab * 40)  # 40 tokens' logits per forward pass
    shapes = []
    hook = lm.model.register_forward_hook(lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)
    texts = ["hi there", "ok", "yes please", "no", "fine then", "a much longer sentence " * 6, "word " * 50]
    try:
        batched = lm.perplexity(texts)
    finally:
        hook.remove()
    assert all(rows == 1 or rows * width <= 40 for rows, width in shapes), shapes
    assert max(rows for rows, _ in shapes) > 1 and sum(rows for rows, _ in shapes) == len(texts)
    single = [lm.perplexity([t]).values[0] for t in texts]
    assert np.allclose(batched.values, single, rtol=1e-4)


def test_eas_has_no_offline_stand_in():
    with pytest.raises(ValueError, match="needs an LLM judge"):
        load_metric("eas").compute(predictions=["I am happy"], judge="minilm")


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    """A tiny random BART NLI model (entailment/neutral/contradiction) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForSequenceClassification

    from emoexp.eval.encoders import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
                     num_labels=3, id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
                     label2id={"contradiction": 0, "neutral": 1, "entailment": 2}, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                     decoder_start_token_id=tok.sep_token_id, forced_eos_token_id=None)
    torch.manual_seed(0)
    model = BartForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("tiny-nli")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_nli_backend_plumbing(tiny_nli):
    import torch

    from emoexp.eval.classifiers import get_classifier

    clf = get_classifier(f"nli:{tiny_nli}")
    texts = ["I am happy today.", "This is a much longer text about a rainy day " * 3]
    res = clf.predict(texts)
    assert res.labels == tuple(LABELS) and res.probs.shape == (2, 6)
    assert np.allclose(res.probs.sum(1), 1.0)
    # Same numbers as scoring each (premise, hypothesis) pair alone: softmax of entailment logits.
    for i, t in enumerate(texts):
        logits = []
        for h in clf.hypotheses:
            enc = clf.tokenizer(t, h, return_tensors="pt")
            enc.pop("token_type_ids", None)
            logits.append(clf.model(**enc).logits[0, 2].item())
        assert np.allclose(res.probs[i], torch.softmax(torch.tensor(logits), 0).numpy(), atol=1e-5)
    assert clf.hypotheses[-1] == "This text expresses no emotion."
    out = load_metric("eps").compute(predictions=texts, backend=f"nli:{tiny_nli}")
    assert out["config"]["backend"] == "nli-zeroshot" and out["config"]["model"] == str(tiny_nli)


def test_nli_backend_rejects_a_model_without_entailment(tiny_nli, tmp_path):
    from transformers import AutoConfig

    from emoexp.eval.classifiers import NLIZeroShot

    cfg = AutoConfig.from_pretrained(tiny_nli)
    cfg.id2label = {0: "neg", 1: "neu", 2: "pos"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    import shutil

    shutil.copytree(tiny_nli, tmp_path / "m")
    cfg.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="not an NLI model"):
        NLIZeroShot(str(tmp_path / "m"))


def test_perplexity_reuses_a_registered_model_without_loading_a_second_copy():
    """The pipeline registers the model it studies; the reference LM is then that very object."""
    from emoexp.eval.perplexity import _LOADED, get_reference_lm, register_loaded
    from emoexp.models import load_model

    model, tok = load_model("tiny-random-llama", seed=3)
    fresh = get_reference_lm("tiny-random-llama").perplexity(["hello there friend"]).values[0]
    try:
        register_loaded("tiny-random-llama", model, tok)
        lm = get_reference_lm("tiny-random-llama")
        assert lm.model is model
        assert lm.perplexity(["hello there friend"]).values[0] != fresh  # seed 3 weights, not seed 0
    finally:
        _LOADED.pop("tiny-random-llama", None)
        get_reference_lm.cache_clear()
