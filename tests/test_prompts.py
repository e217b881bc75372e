"""Conditioning strategies rendered on two tokenizers: SmolLM2's (chat template) and a tiny
byte-level one without a chat template (adds BOS), plus templates that refuse or drop a system role."""

from __future__ import annotations

import copy
import json

import pytest

from emoexp.prompts import (
    DEFAULT_TEMPLATES,
    STRATEGIES,
    Conditioning,
    encode_prompts,
    generation_prompt,
    render_prompt,
    uses_chat_template,
)
from emoexp.vectors import EMOTIONS

Q = "How do I bleed a radiator?"
JOY = "Respond as someone who is feeling intense joy right now, and let that emotion show in your reply."
NEUTRAL = "Respond as someone who is feeling calm and neutral right now, and let that state show in your reply."
SMOL_SYS = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
SMOL_USER = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"

# A template in the style of Gemma's: a system message raises.
REFUSES_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<turn>model\n{% endif %}"
)
# A template that silently ignores system messages.
DROPS_SYSTEM = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<turn>model\n{% endif %}"
)


@pytest.fixture(scope="session")
def chat_tok():
    """SmolLM2-135M-Instruct's tokenizer (ChatML template, no BOS added to plain text)."""
    from transformers import AutoTokenizer

    from emoexp.models import smollm2_dir

    return AutoTokenizer.from_pretrained(str(smollm2_dir()))


@pytest.fixture(scope="session")
def plain_tok():
    """A byte-level tokenizer with no chat template whose post-processor adds <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(sorted(alphabet))}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    assert not uses_chat_template(tok)
    return tok


def _with_template(tok, template: str):
    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


# -- exact rendered prompts --------------------------------------------------------------------

CHAT_EXPECTED = {
    ("system", "joy"): f"<|im_start|>system\n{JOY}<|im_end|>\n{SMOL_USER}",
    ("system", None): f"<|im_start|>system\n{NEUTRAL}<|im_end|>\n{SMOL_USER}",
    ("user", "joy"): f"{SMOL_SYS}<|im_start|>user\n{JOY}\n\n{Q}<|im_end|>\n<|im_start|>assistant\n",
    ("user", None): f"{SMOL_SYS}<|im_start|>user\n{NEUTRAL}\n\n{Q}<|im_end|>\n<|im_start|>assistant\n",
    ("prefill", "joy"): f"{SMOL_SYS}{SMOL_USER}Honestly, this fills me with joy.",
    ("prefill", None): f"{SMOL_SYS}{SMOL_USER}Honestly, this leaves me fairly neutral.",
}
PLAIN_EXPECTED = {
    ("system", "joy"): f"{JOY}\n\nUser: {Q}\nAssistant:",
    ("system", None): f"{NEUTRAL}\n\nUser: {Q}\nAssistant:",
    ("user", "joy"): f"User: {JOY}\n\n{Q}\nAssistant:",
    ("user", None): f"User: {NEUTRAL}\n\n{Q}\nAssistant:",
    ("prefill", "joy"): f"User: {Q}\nAssistant: Honestly, this fills me with joy.",
    ("prefill", None): f"User: {Q}\nAssistant: Honestly, this leaves me fairly neutral.",
}


@pytest.mark.parametrize("key", list(CHAT_EXPECTED))
def test_render_with_chat_template(chat_tok, key):
    strategy, emotion = key
    assert render_prompt(chat_tok, Q, emotion, Conditioning(strategy)) == CHAT_EXPECTED[key]


@pytest.mark.parametrize("key", list(PLAIN_EXPECTED))
def test_render_without_chat_template(plain_tok, key):
    strategy, emotion = key
    assert render_prompt(plain_tok, Q, emotion, Conditioning(strategy)) == PLAIN_EXPECTED[key]


def test_base_system_prompt_in_every_strategy(chat_tok, plain_tok):
    c = Conditioning("system", system_prompt="Be brief.")
    assert render_prompt(chat_tok, Q, "joy", c) == f"<|im_start|>system\nBe brief.\n\n{JOY}<|im_end|>\n{SMOL_USER}"
    assert render_prompt(plain_tok, Q, "joy", c) == f"Be brief.\n\n{JOY}\n\nUser: {Q}\nAssistant:"
    c = Conditioning("prefill", system_prompt="Be brief.")
    assert render_prompt(chat_tok, Q, None, c) == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n{SMOL_USER}Honestly, this leaves me fairly neutral.")
    assert render_prompt(plain_tok, Q, "fear", Conditioning("user", system_prompt="Be brief.")) == (
        f"Be brief.\n\nUser: {JOY.replace('joy', 'fear')}\n\n{Q}\nAssistant:")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("which", ["chat", "plain"])
def test_pair_differs_only_in_conditioning_text(chat_tok, plain_tok, strategy, which):
    tok = chat_tok if which == "chat" else plain_tok
    c = Conditioning(strategy, system_prompt="You answer questions.")
    neutral = render_prompt(tok, Q, None, c)
    assert render_prompt(tok, Q, "neutral", c) == neutral
    for e in EMOTIONS:
        emo = render_prompt(tok, Q, e, c)
        assert c.text(e) in emo and c.text(None) not in emo
        assert emo.replace(c.text(e), c.text(None)) == neutral


def test_empty_neutral_template_means_no_text(plain_tok):
    assert render_prompt(plain_tok, Q, None, Conditioning("system", neutral_template="")) == f"User: {Q}\nAssistant:"
    assert render_prompt(plain_tok, Q, None, Conditioning("user", neutral_template="")) == f"User: {Q}\nAssistant:"
    assert render_prompt(plain_tok, Q, None, Conditioning("prefill", neutral_template="")) == f"User: {Q}\nAssistant:"


def test_template_refusing_system_role_gets_it_merged(plain_tok):
    tok = _with_template(plain_tok, REFUSES_SYSTEM)
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)
    out = render_prompt(tok, Q, "joy", Conditioning("system", system_prompt="Be brief."))
    assert out == f"<turn>user\nBe brief.\n\n{JOY}\n\n{Q}</turn>\n<turn>model\n"


def test_template_dropping_system_role_gets_it_merged(plain_tok):
    tok = _with_template(plain_tok, DROPS_SYSTEM)
    assert render_prompt(tok, Q, "anger", Conditioning("system")) == (
        f"<turn>user\n{JOY.replace('joy', 'anger')}\n\n{Q}</turn>\n<turn>model\n")
    assert render_prompt(tok, Q, "anger", Conditioning("prefill")) == (
        f"<turn>user\n{Q}</turn>\n<turn>model\nHonestly, this fills me with anger.")


# -- generation conditions ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_generation_conditions(chat_tok, plain_tok, strategy):
    c = Conditioning(strategy, system_prompt="Be brief.")
    assert generation_prompt(plain_tok, Q, "unsteered", None, c) == f"Be brief.\n\nUser: {Q}\nAssistant:"
    bare_chat = f"<|im_start|>system\nBe brief.<|im_end|>\n{SMOL_USER}"
    assert generation_prompt(chat_tok, Q, "unsteered", None, c) == bare_chat
    for tok in (chat_tok, plain_tok):
        bare = generation_prompt(tok, Q, "unsteered", None, c)
        assert generation_prompt(tok, Q, "steered", "joy", c) == bare  # the target never enters the text
        for e in EMOTIONS:
            assert generation_prompt(tok, Q, "prompt", e, c) == render_prompt(tok, Q, e, c)
            assert c.text(e) not in bare


def test_generation_prompt_errors(plain_tok):
    with pytest.raises(ValueError, match="needs an emotion"):
        generation_prompt(plain_tok, Q, "prompt", None, Conditioning())
    with pytest.raises(ValueError, match="valid: unsteered, steered, prompt"):
        generation_prompt(plain_tok, Q, "emotional", "joy", Conditioning())


# -- Conditioning -----------------------------------------------------------------------------


def test_conditioning_validation():
    with pytest.raises(ValueError, match="strategy='assistant'; valid: system, user, prefill"):
        Conditioning("assistant")
    with pytest.raises(ValueError, match="must contain {emotion}"):
        Conditioning(emotion_template="Be emotional.")
    with pytest.raises(ValueError, match="must not contain {emotion}"):
        Conditioning(neutral_template="Feel no {emotion}.")
    with pytest.raises(ValueError, match="emotion='happiness'; valid: anger, disgust, fear, joy, sadness"):
        Conditioning().text("happiness")
    assert Conditioning("prefill").emotion_template == DEFAULT_TEMPLATES["prefill"][0]
    custom = Conditioning("user", emotion_template="Feel {emotion}!", neutral_template="Feel calm!")
    assert custom.text("sadness") == "Feel sadness!" and custom.text(None) == "Feel calm!"


def test_describe_records_exact_texts():
    d = Conditioning("system", system_prompt="Be brief.").describe()
    assert d["strategy"] == "system" and d["system_prompt"] == "Be brief."
    assert d["emotion_template"] == JOY.replace("joy", "{emotion}")
    assert d["text.joy"] == JOY and d["text.neutral"] == NEUTRAL
    assert {k for k in d if k.startswith("text.")} == {f"text.{e}" for e in (*EMOTIONS, "neutral")}
    assert json.loads(json.dumps(d)) == d


# -- encoding ---------------------------------------------------------------------------------


def test_encode_chat_template_text_adds_no_special_tokens(chat_tok):
    text = render_prompt(chat_tok, Q, "joy", Conditioning())
    (ids,) = encode_prompts(chat_tok, [text])
    assert ids == chat_tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == chat_tok.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]  # one BOS, from the template
    assert chat_tok.decode(ids) == text


def test_encode_plain_text_adds_bos(plain_tok):
    texts = [render_prompt(plain_tok, Q, e, Conditioning("prefill")) for e in (None, "joy")]
    ids = encode_prompts(plain_tok, texts)
    assert [i[0] for i in ids] == [plain_tok.bos_token_id] * 2
    assert [plain_tok.decode(i[1:]) for i in ids] == texts
    assert encode_prompts(plain_tok, []) == []


def test_plain_replies_end_at_a_line_break(chat_tok, plain_tok):
    """A base model's reply stops at its first line break; a chat model's at its end-of-turn token."""
    from emoexp.prompts import line_break_ids

    cond = Conditioning("prefill")
    assert cond.stop_ids(chat_tok) == [] and cond.describe(chat_tok)["reply_ends_at"] == "end-of-turn token"
    ids = cond.stop_ids(plain_tok)
    assert ids == line_break_ids(plain_tok) and plain_tok.encode("\n", add_special_tokens=False)[0] in ids
    assert all("\n" in plain_tok.decode([i]) for i in ids)
    others = [i for i in range(len(plain_tok)) if i not in set(ids)]
    assert not any("\n" in t for t in plain_tok.batch_decode([[i] for i in others]))
    forced = Conditioning("prefill", prompt_format="plain").stop_ids(chat_tok)  # plain format on a chat model
    assert chat_tok.encode("\n", add_special_tokens=False)[0] in forced and forced == line_break_ids(chat_tok)
