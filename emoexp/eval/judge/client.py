"""The judge's transport: an OpenAI-compatible endpoint (the ``openai`` client) or a local HF chat model.

The ``openai`` client (``pip install 'emoexp[judge]'``) owns timeouts and retries with exponential
backoff of connection errors and HTTP 408/409/429/5xx. Configure it with ``EMOEXP_JUDGE_BASE_URL``
(e.g. ``http://host:8000/v1``), ``EMOEXP_JUDGE_MODEL`` and ``EMOEXP_JUDGE_API_KEY``, or pass a
:class:`JudgeConfig`. The API key is sent only in the ``Authorization`` header: every message
passes through :func:`emoexp.redact.scrub_text` and the key itself is blanked.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...redact import scrub_text

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "HTTPJudge", "JudgeConfig", "JudgeError", "JudgeItemRejected",
           "JudgeReplyError", "JudgeUnavailableError", "LocalJudge", "get_judge"]

ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "EMOEXP_JUDGE_BASE_URL", "EMOEXP_JUDGE_MODEL", "EMOEXP_JUDGE_API_KEY"
class JudgeError(RuntimeError):
    """The judge cannot be used: missing configuration or a rejected request (HTTP 4xx).

    ``completed`` holds the ratings (:class:`~emoexp.eval.judge.Rating`) finished before it failed
    (in :func:`~emoexp.eval.judge.rate`).
    """

    def __init__(self, message: str, completed: list[Any] | None = None):
        super().__init__(message)
        self.completed: list[Any] = list(completed or [])


class JudgeUnavailableError(JudgeError):
    """The judge did not answer after all retries (refused, timed out, HTTP 408/429/5xx)."""


class JudgeReplyError(ValueError):
    """A reply that is not the JSON object asked for."""


class JudgeItemRejected(JudgeReplyError):
    """The endpoint refused this one request (HTTP 400/413/422, e.g. a text longer than the
    judge's context): recorded for that item, not retried, the others go on."""


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
        from ...models import load_model

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


