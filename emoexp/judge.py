"""An LLM judge: an OpenAI-compatible chat-completions endpoint, or a local HF chat model.

Configure the endpoint with ``EMOEXP_JUDGE_BASE_URL`` (e.g. ``http://host:8000/v1``),
``EMOEXP_JUDGE_MODEL`` and ``EMOEXP_JUDGE_API_KEY``, or pass a :class:`JudgeConfig`. Replies
must be one JSON object (a ```json fence around it is tolerated); each score must be a
number and is clamped to 0–100. Transport failures (refused, timeout, HTTP 408/429/5xx) are
retried with exponential backoff and then raise :class:`JudgeUnavailableError`, which
carries the ratings already finished; invalid replies are asked again and, after the last
try, give a rating with ``scores=None`` and the reason. The API key is sent only in the
``Authorization`` header: it never appears in a rating, a log line or an error message.

Example:
    >>> judge = get_judge("judge")                     # reads EMOEXP_JUDGE_*  # doctest: +SKIP
    >>> rate_emotions(judge, ["I am thrilled!"])[0].scores
    {'anger': 0.0, 'disgust': 0.0, 'fear': 0.0, 'joy': 95.0, 'sadness': 0.0}
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .vectors import EMOTIONS

if TYPE_CHECKING:
    from .judge_local import LocalJudge

__all__ = [
    "HTTPJudge",
    "JudgeConfig",
    "JudgeError",
    "JudgeReplyError",
    "JudgeUnavailableError",
    "Rating",
    "get_judge",
    "parse_scores",
    "rate",
    "rate_emotions",
    "rate_topic",
]

ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "EMOEXP_JUDGE_BASE_URL", "EMOEXP_JUDGE_MODEL", "EMOEXP_JUDGE_API_KEY"
SYSTEM = "You are a careful annotator of text. You answer with one JSON object and nothing else."
EAS_PROMPT = (
    "Rate how strongly the text below expresses each of five emotions, from 0 (not at all) to 100 "
    "(extremely). Judge the emotion the text itself expresses, not emotions it merely mentions.\n"
    'Reply with only a JSON object with exactly these number fields: '
    '{"anger": _, "disgust": _, "fear": _, "joy": _, "sadness": _}.\n\nText:\n"""\n<TEXT>\n"""'
)
REMINDER = "Reply with only the JSON object, every field a number from 0 to 100."
TOPIC_PROMPT = (
    "Rate how well the response stays on the topic of the query, from 0 (unrelated) to 100 (fully on "
    'topic), ignoring its tone and emotion.\nReply with only a JSON object: {"topic": _}.\n\n'
    'Query:\n"""\n<QUERY>\n"""\n\nResponse:\n"""\n<TEXT>\n"""'
)


class JudgeError(RuntimeError):
    """The judge cannot be used: missing configuration or a rejected request (HTTP 4xx).

    ``completed`` holds the ratings finished before it failed (in :func:`rate`).
    """

    def __init__(self, message: str, completed: list[Rating] | None = None):
        super().__init__(message)
        self.completed: list[Rating] = list(completed or [])


class JudgeUnavailableError(JudgeError):
    """The judge did not answer after all retries (refused, timed out, HTTP 408/429/5xx)."""


class JudgeReplyError(ValueError):
    """A reply that is not the JSON object asked for."""


@dataclass
class JudgeConfig:
    """Where and how to reach an OpenAI-compatible judge (the key is never shown)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0  #: seconds per HTTP request
    max_retries: int = 3  #: extra tries after a transport failure or an invalid reply
    backoff: float = 1.0  #: seconds before the first retry, doubled each time
    temperature: float = 0.0
    max_tokens: int = 256
    json_mode: bool = True  #: send ``response_format={"type": "json_object"}``
    max_chars: int = 8000  #: longer texts are cut (and flagged) before judging

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        """A config from ``EMOEXP_JUDGE_*`` variables, with keyword overrides.

        Raises:
            JudgeError: no base URL or no model configured.
        """
        values: dict[str, Any] = {"base_url": os.environ.get(ENV_BASE_URL), "model": os.environ.get(ENV_MODEL),
                  "api_key": os.environ.get(ENV_API_KEY) or None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["base_url"] or not values["model"]:
            raise JudgeError(f"no LLM judge configured: set {ENV_BASE_URL} and {ENV_MODEL} "
                             f"(and {ENV_API_KEY} if the endpoint needs one)")
        return cls(**values)


@dataclass
class Rating:
    """One judged item: ``scores`` (None if no valid reply), clamping, tries, reason, truncation."""

    scores: dict[str, float] | None
    clamped: bool = False
    tries: int = 0
    error: str | None = None
    truncated: bool = False


def _strip_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


class HTTPJudge:
    """A judge behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    backend = "llm-judge"

    def __init__(self, config: JudgeConfig):
        self.config = config
        base = config.base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model_id = config.model
        self.max_retries = config.max_retries

    def __repr__(self) -> str:
        return f"HTTPJudge({self.describe()})"

    def describe(self) -> dict[str, Any]:
        """Backend, model and (credential-free) URL for provenance records."""
        return {"backend": self.backend, "model": self.model_id, "url": _strip_userinfo(self.url)}

    def redact(self, text: str) -> str:
        """``text`` with the API key and URL credentials blanked out."""
        key = self.config.api_key
        text = _strip_userinfo(text)
        return text.replace(key, "***") if key else text

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text for ``messages``, retrying transport failures.

        Raises:
            JudgeUnavailableError: no answer after ``1 + max_retries`` tries.
            JudgeError: the endpoint rejected the request (HTTP 4xx other than 408/429).
            JudgeReplyError: the response is not a chat completion.
        """
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                                "max_tokens": cfg.max_tokens}
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                time.sleep(cfg.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read(300).decode("utf-8", "replace") if e.fp else ""
                if e.code in (408, 429) or e.code >= 500:
                    last = f"HTTP {e.code} {e.reason}"
                    continue
                raise JudgeError(self.redact(f"judge at {self.url} rejected the request: HTTP {e.code} "
                                             f"{e.reason}: {detail}")) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"timed out after {cfg.timeout:g} s" if isinstance(reason, TimeoutError) else str(reason)
                continue
            try:
                content = json.loads(raw)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise JudgeReplyError(self.redact(f"not a chat completion: {raw[:200]!r}")) from None
            if not isinstance(content, str):
                raise JudgeReplyError(f"empty reply content ({type(content).__name__})")
            return content
        raise JudgeUnavailableError(self.redact(f"judge at {self.url} ({cfg.model}) unreachable after "
                                                f"{cfg.max_retries + 1} tries: {last}"))


@functools.lru_cache(maxsize=2)
def _local_judge(spec: str) -> LocalJudge:
    from .judge_local import LocalJudge

    return LocalJudge(spec)


def get_judge(spec: str = "judge", config: JudgeConfig | None = None) -> HTTPJudge | LocalJudge:
    """A judge from a spec: ``judge`` (HTTP, ``config`` or ``EMOEXP_JUDGE_*``) or ``hf:<model spec>``.

    Example:
        >>> get_judge("hf:smollm2")                                    # doctest: +SKIP
    """
    if spec in ("judge", "http"):
        return HTTPJudge(config or JudgeConfig.from_env())
    if spec.startswith("hf:"):
        return _local_judge(spec[3:])
    raise ValueError(f"unknown judge {spec!r}: use 'judge' (HTTP endpoint) or 'hf:<model>'")


def parse_scores(reply: str, keys: Sequence[str], lo: float = 0.0, hi: float = 100.0) -> tuple[dict[str, float], bool]:
    """Parse a strict JSON object of numbers; return ``(scores clamped to [lo, hi], clamped?)``.

    Raises:
        JudgeReplyError: not JSON, not an object, a key missing, or a value not a finite number.

    Example:
        >>> parse_scores('{"topic": 140}', ["topic"])
        ({'topic': 100.0}, True)
    """
    text = reply.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    text = fence.group(1) if fence else text
    try:
        obj = json.loads(text)
    except ValueError:
        raise JudgeReplyError(f"reply is not JSON: {reply[:120]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeReplyError(f"reply is JSON but not an object: {reply[:120]!r}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise JudgeReplyError(f"reply lacks {missing}: {reply[:120]!r}")
    scores, clamped = {}, False
    for k in keys:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise JudgeReplyError(f"{k!r} is not a finite number: {v!r}")
        scores[k] = float(min(max(v, lo), hi))
        clamped |= scores[k] != v
    return scores, clamped


def rate(judge: HTTPJudge | LocalJudge, prompts: Sequence[str], keys: Sequence[str], *,
         truncated: Sequence[bool] | None = None, progress: bool = False) -> list[Rating]:
    """Ask ``judge`` each prompt and parse the scores in ``keys``.

    An invalid reply is asked again (with the reply and a reminder appended) up to
    ``judge.max_retries`` times, then gives ``Rating(scores=None, error=...)``.

    Raises:
        JudgeUnavailableError: the judge stopped answering; ``.completed`` has the ratings done.
        JudgeError: the endpoint rejected a request; ``.completed`` has the ratings done.
    """
    out: list[Rating] = []
    items: Any = prompts
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(prompts, desc=f"judge ({judge.model_id})", unit="text")
    for i, prompt in enumerate(items):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        rating = Rating(None, truncated=bool(truncated[i]) if truncated is not None else False)
        for attempt in range(judge.max_retries + 1):
            rating.tries = attempt + 1
            reply: str | None = None
            try:
                reply = judge.complete(messages)
                rating.scores, rating.clamped = parse_scores(reply, keys)
                rating.error = None
                break
            except JudgeError as e:
                raise type(e)(str(e), completed=out) from None
            except JudgeReplyError as e:
                rating.error = judge.redact(str(e))
                if reply is not None:  # show the model its reply and ask again
                    messages = messages[:2] + [{"role": "assistant", "content": reply},
                                               {"role": "user", "content": REMINDER}]
        out.append(rating)
    return out


def _cut(text: str, max_chars: int) -> tuple[str, bool]:
    return (text[:max_chars], True) if len(text) > max_chars else (text, False)


def _fill(template: str, **values: str) -> str:
    """Put ``values`` in ``template``'s ``<NAME>`` slots in one pass (texts may contain ``<TEXT>``)."""
    return re.sub(r"<(QUERY|TEXT)>", lambda m: values[m.group(1)], template)


def _max_chars(judge: HTTPJudge | LocalJudge) -> int:
    return judge.config.max_chars if isinstance(judge, HTTPJudge) else 8000


def rate_emotions(judge: HTTPJudge | LocalJudge, texts: Sequence[str], *, progress: bool = False) -> list[Rating]:
    """EAS: the judge rates each of the five emotions 0–100 for each text.

    Example:
        >>> [r.scores["joy"] for r in rate_emotions(judge, ["Yay!"])]     # doctest: +SKIP
        [90.0]
    """
    cut = [_cut(t, _max_chars(judge)) for t in texts]
    prompts = [_fill(EAS_PROMPT, TEXT=t) for t, _ in cut]
    return rate(judge, prompts, EMOTIONS, truncated=[c for _, c in cut], progress=progress)


def rate_topic(judge: HTTPJudge | LocalJudge, queries: Sequence[str], responses: Sequence[str], *,
               progress: bool = False) -> list[Rating]:
    """Topic consistency: the judge rates 0–100 how well each response stays on its query's topic.

    Example:
        >>> rate_topic(judge, ["Best pasta recipe?"], ["Boil water..."])[0].scores  # doctest: +SKIP
        {'topic': 95.0}
    """
    if len(queries) != len(responses):
        raise ValueError(f"{len(queries)} queries for {len(responses)} responses")
    m = _max_chars(judge)
    cut = [_cut(r, m) for r in responses]
    prompts = [_fill(TOPIC_PROMPT, QUERY=_cut(q, m)[0], TEXT=r) for q, (r, _) in zip(queries, cut)]
    return rate(judge, prompts, ["topic"], truncated=[c for _, c in cut], progress=progress)
