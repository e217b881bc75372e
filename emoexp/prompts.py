"""Prompt conditioning: the neutral / emotion-conditioned pair, and the prompts used at generation.

Extraction renders every query twice, differing only in one conditioning text: the emotion
instruction (``emotion_template`` with ``{emotion}`` filled in) or its neutral counterpart
(``neutral_template``). Where that text goes is the strategy:

- ``system``: the instruction is the system message (after the base ``system_prompt``, if any);
- ``user``: the instruction precedes the query in the user turn (``"{instruction}\\n\\n{query}"``);
- ``prefill``: the assistant turn is opened and an opener in the assistant's own voice is
  appended (default ``"Honestly, this fills me with {emotion}."``), so generation continues it.

An empty ``neutral_template`` means "no conditioning text at all" for the neutral side.

Generation conditions (:func:`generation_prompt`):

- ``unsteered`` and ``steered``: the bare query (base ``system_prompt`` only; no instruction,
  no opener). Both get the same text, so steering is the only difference between them.
- ``prompt``: the prompt baseline, the emotion-conditioned prompt of extraction
  (``render_prompt(tok, query, emotion, cond)``) with no steering.

Rendering: the tokenizer's chat template when ``tokenizer.chat_template`` is set (with
``add_generation_prompt=True``); a template that rejects a system role (raises) or silently
drops it gets the system text merged into the user turn (``"{system}\\n\\n{user}"``). Without a
chat template (a base model), or with ``prompt_format="plain"``, the prompt is
``plain_template`` (default ``"User: {user}\\nAssistant:"``, configurable per model: the query,
its conditioning, an answer cue), preceded by ``"{system}\\n\\n"`` when there is a system text
and followed by a prefill opener after a space; the reply then ends at its first line break
(:meth:`Conditioning.stop_ids`), where a base model would start writing the next turn.

Encoding (:func:`encode_prompts`): chat-templated text already holds the template's BOS and
role tokens, so it is encoded with ``add_special_tokens=False``; plain text is encoded with
``add_special_tokens=True`` (the tokenizer adds BOS if it is configured to). The same test,
:func:`uses_chat_template`, decides both rendering and encoding: encode with the tokenizer
that rendered.

Example:
    >>> cond = Conditioning(strategy="user")
    >>> cond.text("joy")
    'Respond as someone who is feeling intense joy right now, and let that emotion show in your reply.'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .vocab import CONDITIONS, EMOTIONS, PROMPT_FORMATS, STRATEGIES

__all__ = ["DEFAULT_TEMPLATES", "GENERATION_CONDITIONS", "STRATEGIES", "Conditioning", "PromptTooLong",
           "check_lengths", "conversation_prompt", "encode_prompts", "generation_prompt", "line_break_ids",
           "render_prompt", "uses_chat_template"]

GENERATION_CONDITIONS = CONDITIONS
_INSTRUCTION = (
    "Respond as someone who is feeling intense {emotion} right now, and let that emotion show in your reply.",
    "Respond as someone who is feeling calm and neutral right now, and let that state show in your reply.",
)
_OPENER = ("Honestly, this fills me with {emotion}.", "Honestly, this leaves me fairly neutral.")
#: strategy -> (emotion_template, neutral_template) used when a template is left as None.
DEFAULT_TEMPLATES = {"system": _INSTRUCTION, "user": _INSTRUCTION, "prefill": _OPENER}


@dataclass
class Conditioning:
    """How the neutral / emotion-conditioned pair differs (also the prompt baseline's text)."""

    @classmethod
    def of(cls, cfg: Any) -> Conditioning:
        """The conditioning a stage config asks for (strategy, texts, prompt format)."""
        return cls(strategy=cfg.conditioning, emotion_template=cfg.emotion_text, neutral_template=cfg.neutral_text,
                   prompt_format=cfg.prompt_format, plain_template=cfg.plain_template)

    #: where the conditioning text goes: system, user or prefill
    strategy: str = "system"
    #: the emotional text, with an {emotion} placeholder (None: the strategy's default)
    emotion_template: str | None = None
    #: the neutral counterpart, no placeholder; "" means no text at all (None: the strategy's default)
    neutral_template: str | None = None
    #: a base system prompt used in every condition, or None
    system_prompt: str | None = None
    #: chat (the tokenizer's template), plain (``plain_template``, for base models) or auto
    prompt_format: str = "auto"
    #: the plain-text prompt with ``{user}``; a system text goes before it and a prefill opener after it
    plain_template: str = "User: {user}\nAssistant:"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format={self.prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")
        emo, neu = DEFAULT_TEMPLATES[self.strategy]
        if self.emotion_template is None:
            self.emotion_template = emo
        if self.neutral_template is None:
            self.neutral_template = neu
        if "{emotion}" not in self.emotion_template:
            raise ValueError(f"emotion_template must contain {{emotion}}: {self.emotion_template!r}")
        if "{emotion}" in self.neutral_template:
            raise ValueError(f"neutral_template must not contain {{emotion}}: {self.neutral_template!r}")

    def text(self, emotion: str | None) -> str:
        """The conditioning text for ``emotion`` (None or "neutral": the neutral text).

        Example:
            >>> Conditioning(strategy="prefill").text("fear")
            'Honestly, this fills me with fear.'
        """
        emotion = _check_emotion(emotion)
        assert self.emotion_template is not None and self.neutral_template is not None
        return self.neutral_template if emotion is None else self.emotion_template.replace("{emotion}", emotion)

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """Extra stop tokens: none with a chat template (the template's end-of-turn token stops);
        in the plain format a reply ends at its first line break (a base model otherwise writes
        the next ``User:`` turn itself), so every token holding one stops generation.
        """
        return [] if uses_chat_template(tokenizer, self) else line_break_ids(tokenizer)

    def describe(self, tokenizer: Any = None) -> dict[str, str | None]:
        """The exact texts, flat (for EV metadata and MLflow params); with ``tokenizer``, also the
        prompt format it resolves to.

        Example:
            >>> Conditioning().describe()["text.neutral"]
            'Respond as someone who is feeling calm and neutral right now, and let that state show in your reply.'
        """
        out: dict[str, str | None] = {
            "strategy": self.strategy,
            "emotion_template": self.emotion_template,
            "neutral_template": self.neutral_template,
            "system_prompt": self.system_prompt,
            "prompt_format": self.prompt_format,
            "plain_template": self.plain_template,
        }
        if tokenizer is not None:
            chat = uses_chat_template(tokenizer, self)
            out["prompt_format"] = "chat" if chat else "plain"
            out["reply_ends_at"] = "end-of-turn token" if chat else "first line break (at least one token)"
        out.update({f"text.{e}": self.text(e) for e in EMOTIONS})
        out["text.neutral"] = self.text(None)
        out["generation"] = ("unsteered/steered: bare query (base system prompt only); "
                             "prompt: text.<emotion>, no steering")
        return out


def line_break_ids(tokenizer: Any) -> list[int]:
    """Ids of every vocabulary token whose text holds a line break (cached on the tokenizer).

    Example:
        >>> tok = load_tokenizer("smollm2")                    # doctest: +SKIP
        >>> all("\\n" in tok.decode([i]) for i in line_break_ids(tok))   # doctest: +SKIP
        True
    """
    cached = getattr(tokenizer, "_emoexp_line_breaks", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = [i for i, t in enumerate(texts) if "\n" in t]
        tokenizer._emoexp_line_breaks = cached
    return list(cached)


def uses_chat_template(tokenizer: Any, cond: Conditioning | None = None) -> bool:
    """Whether prompts are rendered with ``tokenizer``'s chat template (then encoding skips added
    special tokens): with ``prompt_format`` auto (or no ``cond``) when the tokenizer has one.

    Raises:
        ValueError: ``prompt_format="chat"`` and the tokenizer has no chat template (a base model).
    """
    has = bool(getattr(tokenizer, "chat_template", None))
    fmt = cond.prompt_format if cond is not None else "auto"
    if fmt == "chat" and not has:
        raise ValueError("prompt_format=chat but the tokenizer has no chat template (a base model?): "
                         "use prompt_format plain or auto")
    return has if fmt != "plain" else False


class PromptTooLong(ValueError):
    """A prompt that does not fit the model's context (names the query and the numbers)."""


def check_lengths(prompts: list[list[int]], ids: list[str], context: int | None, reserve: int,
                  limit: int | None = None) -> None:
    """Refuse prompts longer than ``limit`` tokens (default: ``context - reserve``, the room the
    model's context leaves for the response), before any model is loaded.

    Raises:
        PromptTooLong: names the longest prompt's query, its length and the limit.

    Example:
        >>> check_lengths([[1] * 10], ["q1"], context=8, reserve=2)
        Traceback (most recent call last):
        ...
        emoexp.prompts.PromptTooLong: query q1: its prompt is 10 tokens, but the model takes 6 (context 8 minus 2 for the response); shorten the query or set max_prompt_tokens
    """
    cap = limit if limit is not None else (context - reserve if context else None)
    if cap is None or not prompts:
        return
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    n = len(prompts[longest])
    if n > cap:
        why = f"max_prompt_tokens is {cap}" if limit is not None else \
            f"the model takes {cap} (context {context} minus {reserve} for the response)"
        raise PromptTooLong(f"query {ids[longest]}: its prompt is {n} tokens, but {why}; shorten the query or set "
                            "max_prompt_tokens")


def render_prompt(tokenizer: Any, query: str, emotion: str | None, cond: Conditioning) -> str:
    """The full text to feed the model for ``query`` under one side of the conditioning pair.

    Args:
        tokenizer: a Hugging Face tokenizer (its chat template is used when set).
        query: the query text.
        emotion: one of EMOTIONS, or None (or "neutral") for the neutral side.
        cond: the conditioning strategy and texts.

    Returns:
        The prompt, generation prompt included (for ``prefill``, ending with the opener).

    Example:
        >>> render_prompt(plain_tok, "How do I bleed a radiator?", "joy", Conditioning("user"))  # doctest: +SKIP
        'User: Respond as someone ... joy ...\\n\\nHow do I bleed a radiator?\\nAssistant:'
    """
    text = cond.text(emotion)
    if cond.strategy == "system":
        return _render(tokenizer, _join(cond.system_prompt, text), query, "", cond)
    if cond.strategy == "user":
        return _render(tokenizer, cond.system_prompt, _join(text, query) or query, "", cond)
    return _render(tokenizer, cond.system_prompt, query, text, cond)


def generation_prompt(tokenizer: Any, query: str, condition: str, emotion: str | None, cond: Conditioning) -> str:
    """The prompt for one generation condition.

    Args:
        tokenizer: a Hugging Face tokenizer.
        query: the query text.
        condition: ``unsteered`` or ``steered`` (the bare query; ``emotion`` may name the steering
            target and does not enter the text) or ``prompt`` (the emotion-conditioned prompt).
        emotion: the emotion of the ``prompt`` baseline (required there).
        cond: the conditioning strategy and texts.

    Example:
        >>> generation_prompt(tok, "Why is the sky blue?", "prompt", "anger", Conditioning())  # doctest: +SKIP
    """
    if condition not in GENERATION_CONDITIONS:
        raise ValueError(f"condition={condition!r}; valid: {', '.join(GENERATION_CONDITIONS)}")
    if condition in ("prompt", "prompt_steered"):
        if _check_emotion(emotion) is None:
            raise ValueError(f"the prompt baseline needs an emotion, one of {', '.join(EMOTIONS)}")
        return render_prompt(tokenizer, query, emotion, cond)
    return _render(tokenizer, cond.system_prompt, query, "", cond)


def conversation_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A whole conversation (``[{role, content}, ...]``) as the prompt for the assistant's next turn: the
    chat template, or ``Role: text`` lines ending in ``Assistant:`` for a model without one (its reply
    then ends at a line break: :func:`line_break_ids`). ``emoexp chat`` and ``emoexp serve`` use it."""
    if uses_chat_template(tokenizer):
        return _apply(tokenizer, messages)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


def encode_prompts(tokenizer: Any, prompts: list[str], cond: Conditioning | None = None) -> list[list[int]]:
    """Token ids of rendered prompts (no padding).

    Chat-templated text is encoded with ``add_special_tokens=False`` (the template already holds
    BOS and role tokens); plain text with ``add_special_tokens=True``.

    Example:
        >>> ids = encode_prompts(tok, [render_prompt(tok, "Hi", None, Conditioning())])  # doctest: +SKIP
    """
    if not prompts:
        return []
    enc = tokenizer(list(prompts), add_special_tokens=not uses_chat_template(tokenizer, cond))
    return [list(ids) for ids in enc["input_ids"]]


def _check_emotion(emotion: str | None) -> str | None:
    if emotion is None or emotion == "neutral":
        return None
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion={emotion!r}; valid: {', '.join(EMOTIONS)}, or None for neutral")
    return emotion


def _join(first: str | None, second: str | None) -> str | None:
    return "\n\n".join(t for t in (first, second) if t) or None


def _render(tokenizer: Any, system: str | None, user: str, opener: str, cond: Conditioning | None = None) -> str:
    if not uses_chat_template(tokenizer, cond):
        head = f"{system}\n\n" if system else ""
        template = cond.plain_template if cond is not None else "User: {user}\nAssistant:"
        return head + template.replace("{user}", user) + (f" {opener}" if opener else "")
    from jinja2 import TemplateError

    messages = [{"role": "user", "content": user}]
    if system:
        try:
            text = _apply(tokenizer, [{"role": "system", "content": system}, *messages])
        except TemplateError:  # the template refuses a system role (raise_exception in Jinja)
            text = ""
        if system in text:
            return text + opener
        messages = [{"role": "user", "content": f"{system}\n\n{user}"}]  # refused or silently dropped
    return _apply(tokenizer, messages) + opener


def _apply(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text
