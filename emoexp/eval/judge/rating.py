"""Asking the judge: the paper's prompts, strict parsing of the replies, and concurrent rating.

A reply must be one JSON object (a ```json fence around it is tolerated) whose fields a pydantic
model checks: each score a finite number (not a bool or a string), then clamped to 0–100 and
flagged. An invalid reply is shown back to the model with a reminder and asked again; after the
last try the rating has ``scores=None`` and the reason. A judge that stops answering raises
:class:`~emoexp.eval.judge.JudgeUnavailableError`, carrying the ratings already finished.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...vocab import EMOTIONS
from .client import HTTPJudge, JudgeError, JudgeItemRejected, JudgeReplyError, LocalJudge

__all__ = ["EAS_PROMPT", "REJECTED_LIMIT", "TOPIC_PROMPT", "Rating", "parse_scores", "rate", "rate_emotions",
           "rate_topic"]

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


#: Item rejections before any valid rating that mean the requests themselves are wrong.
REJECTED_LIMIT = 8


@dataclass
class Rating:
    """One judged item: ``scores`` (None if no valid reply), clamping, tries, reason, truncation."""

    scores: dict[str, float] | None
    clamped: bool = False
    tries: int = 0
    error: str | None = None
    truncated: bool = False
    rejected: bool = False  #: the endpoint refused this item (HTTP 400/413/422)


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
