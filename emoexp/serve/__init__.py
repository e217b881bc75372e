"""``emoexp serve``: an OpenAI-compatible chat endpoint where each request sets its emotions.

    emoexp serve outputs/run/latest/evs.safetensors             # the EVs' own model, transformers engine
    emoexp serve <MLflow parent run id> --engine vllm            # the run's EV artifact and model, on vLLM

A request may carry ``"emotions": {"joy": 1, "anger": -0.5}`` (α per emotion, or doses with
``--alpha_unit dose``) and ``"centre": true``; without them it is unsteered. Requests with different
emotions share batches and never mix. Loopback by default (``--host`` to expose); an API key from
``--api_key`` or ``EMOEXP_API_KEY`` is required when set, and never printed or logged. See
docs/serve.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from jsonargparse.typing import PositiveInt
from pydantic import SecretStr

from ..config import EngineOptions
from ..vocab import Positions, Site

__all__ = ["Args", "load_served", "main"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Args(EngineOptions):
    """``emoexp serve``: an OpenAI-compatible server whose requests set their own emotions (the engine options
    are those of extract and generate: engine, tensor_parallel_size, pipeline_parallel_size, vllm_eager)."""

    vectors: str = field(default="", metadata={"positional": None, "help": "EV safetensors file or MLflow parent run id"})
    model: str | None = None
    """Model spec (default: the model the vectors were extracted from)."""
    host: str = "127.0.0.1"
    """Address to listen on (loopback by default; 0.0.0.0 exposes the server)."""
    port: PositiveInt = 8000
    """Port to listen on."""
    api_key: SecretStr | None = None
    """Require this key (Authorization: Bearer <key>); or set EMOEXP_API_KEY. Never printed (--print_config
    shows stars)."""
    site: Site | None = None
    """Site to steer (default: the vectors' own)."""
    layers: list[int] | None = None
    """Layers to steer (default: all)."""
    positions: Positions = "all"
    """Steered positions."""
    alpha_unit: Literal["raw", "dose"] = "raw"
    """Units of the emotions' values: raw α x EV, or a dose (||d_l|| = value x mean ||h_l||)."""
    max_tokens: PositiveInt = 512
    """The most new tokens a request may ask for."""
    default_max_tokens: PositiveInt = 128
    """New tokens when a request does not say."""
    max_batch: PositiveInt = 32
    """Requests generated together."""
    batch_window_ms: float = 20.0
    """How long the first request of a batch waits for others."""
    trust_remote_code: bool = False
    """Run the model repository's own code."""
    allow_foreign_vectors: bool = False
    """Steer with vectors extracted from another model (same shapes)."""

    def __post_init__(self) -> None:
        self._engine_checks()


def _vectors_file(spec: str) -> tuple[Path, dict[str, Any]]:
    """The EV file and where it came from: a path, or an MLflow parent run's ``vectors/`` artifact."""
    p = Path(spec)
    if p.is_file():
        return p, {"vectors": str(p)}
    if _RUN_ID.match(spec):
        from mlflow.tracking import MlflowClient

        from ..tracking import tracking_uri

        uri = tracking_uri()
        client = MlflowClient(uri)
        try:
            files = [f.path for f in client.list_artifacts(spec, "vectors") if f.path.endswith(".safetensors")]
        except Exception as e:  # noqa: BLE001 - an unknown run id, an unreachable store
            raise FileNotFoundError(f"MLflow run {spec} in {uri}: {e}") from None
        if not files:
            raise FileNotFoundError(f"MLflow run {spec} has no vectors/*.safetensors artifact (is it a parent run?)")
        # the store's URI is not repeated to clients: it may carry credentials
        return Path(client.download_artifacts(spec, files[0])), {"vectors": files[0], "mlflow_run": spec}
    raise FileNotFoundError(f"no EV file at {spec} (and it is not an MLflow run id)")


def load_served(args: Args) -> Any:
    """Vectors, model and engine for ``args`` (vectors checked against the model before its weights load)."""
    from ..engines import check_engine
    from ..models import inspect_model, load_model, load_tokenizer
    from ..prompts import line_break_ids, uses_chat_template
    from ..vectors import EmotionVectors, check_compatible
    from .app import Served
    from .backends import Batcher, TransformersBackend, VllmBackend

    path, source = _vectors_file(args.vectors)
    evs = EmotionVectors.load(path)
    spec = args.model or evs.metadata.get("model_spec") or evs.metadata.get("model_id")
    if not spec:
        raise ValueError(f"{path} does not say which model it was extracted from: pass --model")
    info = inspect_model(spec, trust_remote_code=args.trust_remote_code)
    check_compatible(evs, info, allow_foreign=args.allow_foreign_vectors, path=path)
    check_engine(args, info)
    site = args.site or evs.metadata.get("site", "residual")
    tok = load_tokenizer(spec, trust_remote_code=args.trust_remote_code)
    stops = [] if uses_chat_template(tok) else line_break_ids(tok)  # a base model's reply: one line
    if args.engine == "vllm":
        from ..engines import build_vllm
        from ..engines.vllm_engine import stop_tokens

        # build_vllm reads a stage config: these arguments plus the model and the stage defaults serve keeps
        stage = SimpleNamespace(**{**vars(args), "model": spec, "dtype": "auto", "seed": 0, "revision": None})
        engine = build_vllm(stage, info, site=site, layers=args.layers, probe=tok.encode("Hello"))
        backend: Any = VllmBackend(engine, tok, eos_ids=stop_tokens(spec, tok), stop_ids=stops)
    else:
        model, tok = load_model(spec, trust_remote_code=args.trust_remote_code)
        backend = TransformersBackend(model, tok, site=site, layers=args.layers, positions=args.positions,
                                      stop_ids=stops)
    centred = evs.centred() if len(evs.emotions) > 1 else None
    given = args.api_key.get_secret_value() if isinstance(args.api_key, SecretStr) else args.api_key
    key = given or os.environ.get("EMOEXP_API_KEY") or None
    source.update(vectors_fingerprint=evs.fingerprint(), engine=backend.name, site=site,
                  layers=args.layers or "all", positions=args.positions)
    return Served(model_id=spec, tok=tok, evs=evs, centred=centred,
                  batcher=Batcher(backend, tok, max_batch=args.max_batch, window_s=args.batch_window_ms / 1000),
                  context=int(info.context or 2048), max_tokens=args.max_tokens,
                  default_max_tokens=args.default_max_tokens, alpha_unit=args.alpha_unit, api_key=key, source=source)


def main(args: Args) -> int:
    import uvicorn

    from ..redact import log
    from .app import make_app

    served = load_served(args)
    where = f"http://{args.host}:{args.port}/v1"
    log(f"emoexp serve: {served.model_id} ({served.source['engine']} engine), vectors "
        f"{served.source['vectors_fingerprint'][:12]} ({', '.join(served.evs.emotions)}) on {where}; "
        f"API key {'required' if served.api_key else 'not required'}")
    try:
        uvicorn.run(make_app(served), host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        served.batcher.close()
    return 0
