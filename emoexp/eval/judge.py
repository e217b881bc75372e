"""An LLM judge (EAS and judged topic): an OpenAI-compatible endpoint, or a local HF chat model.

The endpoint is reached with the ``openai`` client (``pip install 'emoexp[judge]'``), which
owns the transport: timeouts, and retries with exponential backoff of connection errors and
HTTP 408/409/429/5xx. Configure it with ``EMOEXP_JUDGE_BASE_URL`` (e.g. ``http://host:8000/v1``),
``EMOEXP_JUDGE_MODEL`` and ``EMOEXP_JUDGE_API_KEY``, or pass a :class:`JudgeConfig`. A reply must
be one JSON object (a ```json fence around it is tolerated) whose fields a pydantic model checks:
each score a finite number (not a bool or a string), then clamped to 0–100 and flagged. An
invalid reply is shown back to the model with a reminder and asked again; after the last try the
rating has ``scores=None`` and the reason. A judge that stops answering raises
:class:`JudgeUnavailableError`, carrying the ratings already finished. The API key is sent only
in the ``Authorization`` header: every message passes through :func:`emoexp.redact.scrub_text`
and the key itself is blanked.

Example:
    >>> judge = get_judge("judge")                     # reads EMOEXP_JUDGE_*  # doctest: +SKIP
    >>> rate_emotions(judge, ["I am thrilled!"])[0].scores
    {'anger': 0.0, 'disgust': 0.0, 'fear': 0.0, 'joy': 95.0, 'sadness': 0.0}
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..redact import scrub_text
from ..vocab import EMOTIONS

__all__ = ["HTTPJudge", "JudgeConfig", "JudgeError", "JudgeItemRejected", "JudgeReplyError", "JudgeUnavailableError",
           "LocalJudge", "Rating", "get_judge", "parse_scores", "rate", "rate_emotions", "rate_topic"]

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


class JudgeItemRejected(JudgeReplyError):
    """The endpoint refused this one request (HTTP 400/413/422, e.g. a text longer than the
    judge's context): recorded for that item, not retried, the others go on."""


#: Item rejections before any valid rating that mean the requests themselves are wrong.
REJECTED_LIMIT = 8


@dataclass
class JudgeConfig:
    """Where and how to reach an OpenAI-compatible judge (the key is never shown)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0  #: seconds per HTTP request
    max_retries: int = 3  #: extra tries after a transport failure or an invalid reply
    temperature: float = 0.0
    max_tokens: int = 256
    #: ``schema``: ``response_format`` a JSON schema of exactly the asked number fields (the server
    #: constrains decoding to it: vLLM, OpenAI); ``object``: any JSON object; ``off``: no response_format
    json_mode: str | bool = "schema"
    max_chars: int = 8000  #: longer texts are cut (and flagged) before judging
    concurrency: int = 8  #: requests in flight at once (a serving engine batches them)

    def __post_init__(self) -> None:
        mode = {True: "object", False: "off"}.get(self.json_mode, self.json_mode)  # type: ignore[call-overload]
        if mode not in ("schema", "object", "off"):
            raise JudgeError(f"json_mode must be 'schema', 'object' or 'off', not {self.json_mode!r}")
        self.json_mode = mode

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
    rejected: bool = False  #: the endpoint refused this item (HTTP 400/413/422)


class HTTPJudge:
    """A judge behind an OpenAI-compatible ``/chat/completions`` endpoint (the ``openai`` client)."""

    backend = "llm-judge"

    def __init__(self, config: JudgeConfig):
        try:
            import openai
        except ImportError as e:
            raise JudgeError("the HTTP judge needs the openai client: pip install 'emoexp[judge]'") from e
        self.config = config
        self.model_id = config.model
        self.max_retries = config.max_retries
        base = config.base_url.rstrip("/").removesuffix("/chat/completions")
        self.url = scrub_text(base + "/chat/completions")
        self._client = openai.OpenAI(base_url=base, api_key=config.api_key or "none", timeout=config.timeout,
                                     max_retries=config.max_retries)

    def __repr__(self) -> str:
        return f"HTTPJudge({self.describe()})"

    def describe(self) -> dict[str, Any]:
        """Backend, model and (credential-free) URL for provenance records."""
        return {"backend": self.backend, "model": self.model_id, "url": self.url}

    def redact(self, text: str) -> str:
        """``text`` with the API key and URL credentials blanked out."""
        key = self.config.api_key
        text = scrub_text(text)
        return text.replace(key, "***") if key else text

    def response_format(self, keys: Sequence[str] | None) -> dict[str, Any]:
        """The ``response_format`` request field for replies with the number fields ``keys``."""
        mode = self.config.json_mode
        if mode == "off":
            return {}
        if mode == "object" or not keys:
            return {"response_format": {"type": "json_object"}}
        schema = {"type": "object", "properties": {k: {"type": "number"} for k in keys}, "required": list(keys),
                  "additionalProperties": False}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "ratings", "schema": schema, "strict": True}}}

    def complete(self, messages: list[dict[str, str]], keys: Sequence[str] | None = None) -> str:
        """The assistant's reply text for ``messages`` (the client retries transport failures);
        with ``keys``, the reply is asked to be a JSON object of those number fields.

        Raises:
            JudgeUnavailableError: no answer after ``1 + max_retries`` tries.
            JudgeError: the endpoint rejected the request (HTTP 401/403/404 and other 4xx).
            JudgeItemRejected: the endpoint refused this request (HTTP 400/413/422).
            JudgeReplyError: the response is not a chat completion.
        """
        import openai

        cfg = self.config
        extra = self.response_format(keys)
        tries = f"unreachable after {cfg.max_retries + 1} tries"
        try:
            resp = self._client.chat.completions.create(model=cfg.model, messages=messages,  # type: ignore[arg-type]
                                                        temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                                        **extra)  # type: ignore[call-overload]
        except openai.APITimeoutError:
            raise JudgeUnavailableError(f"judge at {self.url} ({cfg.model}) {tries}: timed out after "
                                        f"{cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            raise JudgeUnavailableError(self.redact(f"judge at {self.url} ({cfg.model}) {tries}: {e}")) from None
        except openai.APIStatusError as e:
            detail = self.redact(f"HTTP {e.status_code}: {str(e.response.text)[:200]}")
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise JudgeUnavailableError(f"judge at {self.url} ({cfg.model}) {tries}: {detail}") from None
            if e.status_code in (400, 413, 422):
                raise JudgeItemRejected(f"judge at {self.url} refused this text: {detail}") from None
            raise JudgeError(f"judge at {self.url} rejected the request: {detail}") from None
        except (ValueError, TypeError) as e:  # a body that is not a chat completion
            raise JudgeReplyError(self.redact(f"not a chat completion: {e}")) from None
        content = resp.choices[0].message.content if getattr(resp, "choices", None) else None
        if not isinstance(content, str):
            raise JudgeReplyError(f"not a chat completion, or an empty reply ({type(content).__name__})")
        return content


class LocalJudge:
    """A judge that is a local Hugging Face chat model (greedy decoding); its replies go through
    the same parsing, retries and clamping as the HTTP judge's.

    Args:
        spec: an :func:`emoexp.models.load_model` spec with a chat template.
        max_new_tokens: reply length limit.
        max_retries: extra tries after an invalid reply.
    """

    backend = "hf-judge"

    def __init__(self, spec: str, *, max_new_tokens: int = 96, max_retries: int = 2):
        from ..models import load_model

        self.model_id = spec
        self.model, self.tokenizer = load_model(spec)
        self.max_new_tokens, self.max_retries = max_new_tokens, max_retries
        self.config = JudgeConfig("local", spec)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_id}

    def redact(self, text: str) -> str:
        return text

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@functools.lru_cache(maxsize=2)
def _local_judge(spec: str) -> LocalJudge:
    return LocalJudge(spec)


def get_judge(spec: str = "judge", config: JudgeConfig | None = None) -> HTTPJudge | LocalJudge:
    """A judge from a spec: ``judge`` (HTTP, ``config`` or ``EMOEXP_JUDGE_*``) or ``hf:<model spec>``."""
    if spec in ("judge", "http"):
        return HTTPJudge(config or JudgeConfig.from_env())
    if spec.startswith("hf:"):
        return _local_judge(spec[3:])
    raise ValueError(f"unknown judge {spec!r}: use 'judge' (HTTP endpoint) or 'hf:<model>'")


@functools.cache
def _reply_model(keys: tuple[str, ...]) -> Any:
    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {k: (float, Field(allow_inf_nan=False)) for k in keys}
    return create_model("JudgeReply", __config__=ConfigDict(strict=True, extra="ignore"), **fields)


def parse_scores(reply: str, keys: Sequence[str], lo: float = 0.0, hi: float = 100.0) -> tuple[dict[str, float], bool]:
    """Parse a strict JSON object of numbers; return ``(scores clamped to [lo, hi], clamped?)``.

    Raises:
        JudgeReplyError: not JSON, not an object, a key missing, or a value not a finite number.

    Example:
        >>> parse_scores('{"topic": 140}', ["topic"])
        ({'topic': 100.0}, True)
    """
    from pydantic import ValidationError

    text = reply.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    text = fence.group(1) if fence else text
    try:
        obj = json.loads(text)
    except ValueError:
        raise JudgeReplyError(f"reply is not JSON: {reply[:120]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeReplyError(f"reply is JSON but not an object: {reply[:120]!r}")
    try:
        parsed = _reply_model(tuple(keys)).model_validate(obj)
    except ValidationError as e:
        missing = [str(err["loc"][0]) for err in e.errors() if err["type"] == "missing"]
        if missing:
            raise JudgeReplyError(f"reply lacks {missing}: {reply[:120]!r}") from None
        bad = e.errors()[0]
        raise JudgeReplyError(f"{bad['loc'][0]!r} is not a finite number: {bad.get('input')!r}") from None
    raw = {k: float(getattr(parsed, k)) for k in keys}
    scores = {k: min(max(v, lo), hi) for k, v in raw.items()}
    return scores, scores != raw


def _rate_one(judge: HTTPJudge | LocalJudge, prompt: str, keys: Sequence[str], truncated: bool) -> Rating:
    """One prompt asked until a valid reply or ``judge.max_retries`` more tries (JudgeError propagates)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    rating = Rating(None, truncated=truncated)
    for attempt in range(judge.max_retries + 1):
        rating.tries = attempt + 1
        reply: str | None = None
        try:
            reply = judge.complete(messages, keys) if isinstance(judge, HTTPJudge) else judge.complete(messages)
            rating.scores, rating.clamped = parse_scores(reply, keys)
            rating.error = None
            break
        except JudgeItemRejected as e:
            rating.error, rating.rejected = judge.redact(str(e)), True
            break
        except JudgeReplyError as e:
            rating.error = judge.redact(str(e))
            if reply is not None:  # show the model its reply and ask again
                messages = messages[:2] + [{"role": "assistant", "content": reply},
                                           {"role": "user", "content": REMINDER}]
    return rating


def rate(judge: HTTPJudge | LocalJudge, prompts: Sequence[str], keys: Sequence[str], *,
         truncated: Sequence[bool] | None = None, progress: bool = False,
         on_rating: Callable[[int, Rating], None] | None = None) -> list[Rating]:
    """Ask ``judge`` each prompt and parse the scores in ``keys``, in the prompts' order.

    An invalid reply is asked again (with the reply and a reminder appended) up to
    ``judge.max_retries`` times, then gives ``Rating(scores=None, error=...)``. An HTTP judge is
    sent ``config.concurrency`` prompts at once (threads; a serving engine batches them); a
    local one, one at a time. A prompt the endpoint refuses (HTTP 400/413/422) gets
    ``Rating(scores=None, rejected=True)``; if the first :data:`REJECTED_LIMIT` finished all
    were refused, the requests themselves are wrong and :class:`JudgeError` is raised.
    ``on_rating(index, rating)`` is called as each prompt finishes (to save it at once).

    Raises:
        JudgeUnavailableError: the judge stopped answering; ``.completed`` has the ratings done
            (the longest finished run from the first prompt, so they line up with ``prompts``).
        JudgeError: the endpoint rejected a request; ``.completed`` as above.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    flags = [bool(truncated[i]) if truncated is not None else False for i in range(len(prompts))]
    workers = max(1, judge.config.concurrency) if isinstance(judge, HTTPJudge) else 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=f"judge ({judge.model_id})", unit="text")
    done: dict[int, Rating] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_rate_one, judge, p, keys, flags[i]): i for i, p in enumerate(prompts)}
        pending = set(futures)
        try:
            while pending and failure is None:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(finished, key=futures.__getitem__):
                    if f.exception() is not None:
                        failure = failure or f.exception()
                        continue
                    done[futures[f]] = r = f.result()
                    if on_rating is not None:
                        on_rating(futures[f], r)
                    if bar is not None:
                        bar.update()
                    if len(done) == REJECTED_LIMIT and all(x.rejected for x in done.values()):
                        hint = (" (a server without JSON-schema replies: JudgeConfig(json_mode='object'), or "
                                "--judge_json_mode object)") if judge.config.json_mode == "schema" else ""
                        failure = failure or JudgeError(f"the judge rejected the first {REJECTED_LIMIT} "
                                                        f"requests{hint}: {r.error}")
        finally:  # on a failure or Ctrl-C, what has not started is never sent
            for f in pending:
                f.cancel()
    for f, i in futures.items():  # those in flight when it failed, finished since: kept too
        if i not in done and not f.cancelled() and f.exception() is None:
            done[i] = f.result()
            if on_rating is not None:
                on_rating(i, done[i])
    if bar is not None:
        bar.close()
    if isinstance(failure, JudgeError):
        completed = []
        while len(completed) in done:
            completed.append(done[len(completed)])
        raise type(failure)(str(failure), completed=completed) from None
    if failure is not None:
        raise failure
    return [done[i] for i in range(len(prompts))]


def _cut(text: str, max_chars: int) -> tuple[str, bool]:
    return (text[:max_chars], True) if len(text) > max_chars else (text, False)


def _fill(template: str, **values: str) -> str:
    """Put ``values`` in ``template``'s ``<NAME>`` slots in one pass (texts may contain ``<TEXT>``)."""
    return re.sub(r"<(QUERY|TEXT)>", lambda m: values[m.group(1)], template)


def rate_emotions(judge: HTTPJudge | LocalJudge, texts: Sequence[str], *, progress: bool = False,
                  on_rating: Callable[[int, Rating], None] | None = None) -> list[Rating]:
    """EAS: the judge rates each of the five emotions 0–100 for each text."""
    cut = [_cut(t, judge.config.max_chars) for t in texts]
    prompts = [_fill(EAS_PROMPT, TEXT=t) for t, _ in cut]
    return rate(judge, prompts, EMOTIONS, truncated=[c for _, c in cut], progress=progress, on_rating=on_rating)


def rate_topic(judge: HTTPJudge | LocalJudge, queries: Sequence[str], responses: Sequence[str], *,
               progress: bool = False) -> list[Rating]:
    """Topic consistency: the judge rates 0–100 how well each response stays on its query's topic."""
    if len(queries) != len(responses):
        raise ValueError(f"{len(queries)} queries for {len(responses)} responses")
    m = judge.config.max_chars
    cut = [_cut(r, m) for r in responses]
    prompts = [_fill(TOPIC_PROMPT, QUERY=_cut(q, m)[0], TEXT=r) for q, (r, _) in zip(queries, cut)]
    return rate(judge, prompts, ["topic"], truncated=[c for _, c in cut], progress=progress)
