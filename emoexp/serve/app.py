"""The OpenAI-compatible HTTP surface: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
(``stream: true`` too), each request with its own ``emotions`` and ``centre``.

Every bad request is an HTTP 400 (401 for the key) with a one-line reason in OpenAI's error shape,
and never reaches the model, so a bad request cannot stop anyone else's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI
from fastapi import Request as HttpRequest  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse

from .backends import Batcher, Request

__all__ = ["BadRequest", "Served", "make_app"]


class BadRequest(ValueError):
    """A request the server refuses (``status`` 400 or 401), with a one-line reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Served:
    """What the server serves: the model's id, its tokenizer, the EVs (and centred EVs), their provenance."""

    model_id: str
    tok: Any
    evs: Any
    centred: Any  # evs.centred(), or None when the file holds one emotion
    batcher: Batcher
    context: int
    max_tokens: int = 512
    default_max_tokens: int = 128
    alpha_unit: str = "raw"
    api_key: str | None = None
    source: dict[str, Any] | None = None  # vectors path, fingerprint, MLflow run, engine

    def meta(self) -> dict[str, Any]:
        return dict(self.source or {})


def direction(served: Served, body: dict[str, Any]) -> tuple[torch.Tensor | None, dict[str, float], bool]:
    """The request's steering direction from ``emotions`` and ``centre``.

    Raises:
        BadRequest: emotions not an object, an unknown emotion, a value that is not a finite number,
            ``centre`` not a boolean or impossible.
    """
    emotions = body.get("emotions") or {}
    centre = body.get("centre", False)
    if not isinstance(centre, bool):
        raise BadRequest(f"centre: expected true or false, got {centre!r}")
    if not isinstance(emotions, dict):
        raise BadRequest(f"emotions: expected an object like {{\"joy\": 1, \"anger\": -0.5}}, got {emotions!r}")
    known = list(served.evs.emotions)
    weights: dict[str, float] = {}
    for name, value in emotions.items():
        if name not in known:
            raise BadRequest(f"emotions: unknown emotion {name!r}; this server's vectors hold {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f"emotions: {name} must be a finite number, got {value!r}")
        weights[name] = float(value)
    if not any(weights.values()):
        return None, weights, centre
    evs = served.evs
    if centre:
        if served.centred is None:
            raise BadRequest("centre: these vectors hold one emotion; centring needs two or more")
        evs = served.centred
    if served.alpha_unit == "dose":
        d = sum(evs.at_dose({k: 1.0}, v) for k, v in weights.items() if v)
    else:
        d = evs.combine(weights)
    return d, weights, centre


def _max_tokens(served: Served, body: dict[str, Any], prompt_len: int) -> int:
    n = body.get("max_completion_tokens", body.get("max_tokens")) or served.default_max_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadRequest(f"max_tokens: expected a positive integer, got {n!r}")
    if n > served.max_tokens:
        raise BadRequest(f"max_tokens: {n} is more than this server allows ({served.max_tokens}; --max_tokens)")
    if prompt_len + n > served.context:
        raise BadRequest(f"the prompt ({prompt_len} tokens) plus max_tokens ({n}) is longer than the model's context "
                         f"({served.context} tokens)")
    return n


def _sampling(body: dict[str, Any]) -> None:
    t = body.get("temperature")
    if t not in (None, 0, 0.0):
        raise BadRequest("temperature: this server decodes greedily (as emoexp's studies do): send 0 or leave it out")
    if body.get("n", 1) != 1:
        raise BadRequest("n: one reply per request")


def chat_prompt(served: Served, body: dict[str, Any]) -> list[int]:
    from ..prompts import conversation_prompt, encode_prompts

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user",
                                                                                            "assistant")
            for m in messages):
        raise BadRequest("messages: expected a non-empty list of {role: system|user|assistant, content: text}")
    return encode_prompts(served.tok, [conversation_prompt(served.tok, messages)])[0]


def text_prompt(served: Served, body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt: expected one non-empty string")
    return list(served.tok(prompt)["input_ids"])


def make_app(served: Served) -> Any:
    """The FastAPI application for ``served``."""
    app = FastAPI(title="emoexp serve", docs_url=None, redoc_url=None)

    def error(e: BadRequest) -> JSONResponse:
        kind = "authentication_error" if e.status == 401 else "invalid_request_error"
        return JSONResponse({"error": {"message": str(e), "type": kind, "param": None, "code": None}},
                            status_code=e.status)

    def check_key(req: HttpRequest) -> None:
        if served.api_key is None:
            return
        got = req.headers.get("authorization", "")
        token = got[7:] if got.lower().startswith("bearer ") else ""
        if not token:
            raise BadRequest("missing API key: send Authorization: Bearer <key>", 401)
        if not hmac.compare_digest(token.encode(), served.api_key.encode()):
            raise BadRequest("wrong API key", 401)

    async def body_of(req: HttpRequest) -> dict[str, Any]:
        try:
            body = json.loads(await req.body() or b"{}")
        except ValueError as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if model not in (None, served.model_id):
            raise BadRequest(f"model: this server serves {served.model_id!r}, not {model!r}")
        return body

    @app.get("/v1/models")
    async def models(req: HttpRequest) -> Any:
        try:
            check_key(req)
        except BadRequest as e:
            return error(e)
        return {"object": "list", "data": [{"id": served.model_id, "object": "model", "created": 0,
                                            "owned_by": "emoexp", "emoexp": served.meta()}]}

    async def complete(req: HttpRequest, chat: bool) -> Any:
        try:
            check_key(req)
            body = await body_of(req)
            _sampling(body)
            prompt = chat_prompt(served, body) if chat else text_prompt(served, body)
            d, weights, centre = direction(served, body)
            n = _max_tokens(served, body, len(prompt))
        except BadRequest as e:
            return error(e)
        fut = served.batcher.submit(Request(prompt, d, n))
        try:
            out = await asyncio.wrap_future(fut)
        except Exception as e:  # noqa: BLE001 - the batch failed: say why, keep serving
            return JSONResponse({"error": {"message": f"generation failed: {e}", "type": "server_error"}},
                                status_code=500)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        meta = {**served.meta(), "emotions": weights, "centre": centre, "alpha_unit": served.alpha_unit}
        finish = "stop" if out.finished else "length"
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(out.response_ids),
                 "total_tokens": len(prompt) + len(out.response_ids)}
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(_stream(served, out, rid, created, chat, finish, meta),
                                     media_type="text/event-stream")
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": out.text, "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": served.model_id, "choices": [choice], "usage": usage, "emoexp": meta}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: HttpRequest) -> Any:
        return await complete(req, chat=True)

    @app.post("/v1/completions")
    async def completions(req: HttpRequest) -> Any:
        return await complete(req, chat=False)

    return app


def _stream(served: Served, out: Any, rid: str, created: int, chat: bool, finish: str,
            meta: dict[str, Any]) -> Iterator[str]:
    """Server-sent events, one per token of the finished reply (text deltas that add up to the reply)."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    sent = ""

    def event(delta: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": delta or ""} if first else (
                {"content": delta} if delta is not None else {})
            choice = {"index": 0, "delta": d, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
        payload = {"id": rid, "object": obj, "created": created, "model": served.model_id, "choices": [choice]}
        if reason is not None:
            payload["emoexp"] = meta
        return f"data: {json.dumps(payload)}\n\n"

    yield event("", None, first=True)
    for k in range(1, len(out.response_ids) + 1):
        text = served.tok.decode(out.response_ids[:k], skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        if text != sent and text.startswith(sent):
            yield event(text[len(sent):], None)
            sent = text
    if sent != out.text:  # whatever decoding as a whole adds
        yield event(out.text.removeprefix(sent), None)
    yield event(None, finish)
    yield "data: [DONE]\n\n"
