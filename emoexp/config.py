"""Configuration: dataclasses whose fields are the CLI flags and the YAML keys.

Precedence: dataclass defaults < ``--config file.yaml`` < flags given on the command line.
Each field's docstring-comment (the ``#:`` line above it) becomes the flag's help.

Example:
    >>> cfg = ExtractConfig(model="tiny-random-llama", limit=2)
    >>> cfg.site
    'residual'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .capture import SCOPES
from .layers import SITES
from .steering import POSITIONS
from .vectors import EMOTIONS

__all__ = [
    "CONDITIONS", "ConfigError", "ExtractConfig", "GenerateConfig", "RunConfig", "add_dataclass_arguments",
    "config_from_args", "fingerprint", "load_yaml", "parse_target",
]

#: Generation conditions: no steering, EV steering, and the prompt baseline (the emotional
#: instruction in the prompt, no steering).
CONDITIONS = ("unsteered", "steered", "prompt")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


class ConfigError(ValueError):
    """An invalid configuration value (the message names the field)."""


def parse_target(target: str) -> dict[str, float]:
    """A steering target as weights: ``joy`` -> {joy: 1}; ``joy=1,anger=-0.5``; ``base``.

    Raises:
        ConfigError: unknown emotion or a non-finite weight.
    """
    out: dict[str, float] = {}
    for part in str(target).split(","):
        name, _, w = part.partition("=")
        name = name.strip()
        if name not in (*EMOTIONS, "base"):
            raise ConfigError(f"unknown emotion {name!r} in target {target!r}; valid: {', '.join(EMOTIONS)}, base")
        weight = float(w) if w.strip() else 1.0
        if not math.isfinite(weight):
            raise ConfigError(f"weight {w!r} in target {target!r} is not finite")
        out[name] = out.get(name, 0.0) + weight
    return out


@dataclass
class Common:
    #: model: 'smollm2' (offline), 'tiny-random-<arch>', a folder, or a hub id
    model: str = "smollm2"
    #: hub revision (branch, tag or commit)
    revision: str | None = None
    #: weights dtype: auto, float32, bfloat16, float16
    dtype: str = "auto"
    #: allow model code from the hub (needed by some families; opt in per config)
    trust_remote_code: bool = False
    #: dotted path of the decoder block list, overriding discovery
    layers_path: str | None = None
    #: cpu, gpu or auto
    accelerator: str = "auto"
    #: processes (GPUs) per node
    devices: int = 1
    #: nodes
    num_nodes: int = 1
    #: Fabric precision (default: 32-true on CPU, bf16-true on GPU)
    precision: str | None = None
    #: seed for subsets and sampling
    seed: int = 0
    #: prompts per batch (batches are formed globally, then dealt to ranks)
    batch_size: int = 8
    #: new tokens per response
    max_new_tokens: int = 48
    #: conditioning strategy for the emotional / neutral pair: system, user, prefill (docs/ablation.md)
    conditioning: str = "prefill"

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator={self.accelerator!r}; valid: {', '.join(ACCELERATORS)}")
        for name in ("devices", "num_nodes", "batch_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype={self.dtype!r}; valid: auto, float32, bfloat16, float16")
        from .models import REMOTE_CODE_MODELS

        if self.model in REMOTE_CODE_MODELS and not self.trust_remote_code:
            raise ConfigError(f"model {self.model} needs its own modelling code from the hub: set "
                              "trust_remote_code: true in the config to opt in")
        if self.conditioning not in ("system", "user", "prefill"):
            raise ConfigError(f"conditioning={self.conditioning!r}; valid: system, user, prefill")


@dataclass
class ExtractConfig(Common):
    #: queries: 'emotionquery', 'emotionquery_plus', a file, or a hub dataset id
    data: str = "emotionquery"
    #: at most this many queries per emotion (None = all)
    limit: int | None = None
    #: emotions to extract
    emotions: list[str] = field(default_factory=lambda: list(EMOTIONS))
    #: where vectors are read/added: attn (per-layer contributions, the default), residual, mlp
    site: str = "attn"
    #: tokens averaged: response, prompt, all, last
    scope: str = "response"
    #: average over queries of per-query token means ('query', the paper's) or over all tokens ('token')
    weighting: str = "query"
    #: capture activations while generating ('decode', fast) or in a forward pass afterwards ('forward')
    capture: str = "decode"
    #: output safetensors file
    out: str = "outputs/evs.safetensors"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.site not in SITES:
            raise ConfigError(f"site={self.site!r}; valid: {', '.join(SITES)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r}; valid: {', '.join(SCOPES)}")
        if self.weighting not in ("query", "token"):
            raise ConfigError(f"weighting={self.weighting!r}; valid: query, token")
        if self.capture not in ("decode", "forward"):
            raise ConfigError(f"capture={self.capture!r}; valid: decode, forward")
        bad = [e for e in self.emotions if e not in EMOTIONS]
        if bad or not self.emotions:
            raise ConfigError(f"emotions={self.emotions}; valid: {', '.join(EMOTIONS)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {self.limit}")


#: torch.compile modes accepted by GenerateConfig.compile
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class GenerateConfig(Common):
    #: evaluation queries: 'emotionquery_plus', a file, or a hub dataset id
    data: str = "emotionquery_plus"
    #: at most this many queries per label (None = all)
    limit: int | None = None
    #: emotion vectors (safetensors from `emoexp extract`)
    vectors: str = "outputs/evs.safetensors"
    #: steering targets: emotions, 'base', or mixes like 'joy=1,anger=-1'
    targets: list[str] = field(default_factory=lambda: list(EMOTIONS))
    #: alpha grid (steering strength)
    alphas: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0, 2.0, 4.0])
    #: conditions: unsteered, steered, prompt (the prompt baseline)
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    #: layers to steer (None = all; negative counts from the end)
    layers: list[int] | None = None
    #: site to steer (None = the vectors' own site)
    site: str | None = None
    #: positions to steer: all, generated
    positions: str = "all"
    #: alpha units: 'raw' (alpha x EV) or 'dose' (per layer, ||d_l|| = alpha x mean ||h_l||)
    alpha_unit: str = "raw"
    #: sample instead of greedy decoding
    do_sample: bool = False
    #: sampling temperature
    temperature: float = 0.6
    #: nucleus sampling top_p
    top_p: float = 0.9
    #: pool the grid's (entry, query) cells into shared batches, each row steered by its own
    #: direction; false = one grid entry per batch (always so with `compile`)
    pool_entries: bool = True
    #: fast path (GPU): static KV cache + torch.compile'd decoding in this torch.compile mode
    #: (default, reduce-overhead = CUDA graphs, max-autotune), steering folded into biases; None = eager + hooks
    compile: str | None = None
    #: torch.compile backend for `compile` (inductor; eager for a quick check)
    compile_backend: str = "inductor"
    #: output JSONL (one row per generation, dataset order)
    out: str = "outputs/generations.jsonl"

    def __post_init__(self) -> None:
        super().__post_init__()
        for a in self.alphas:
            if not isinstance(a, (int, float)) or not math.isfinite(float(a)):
                raise ConfigError(f"alphas must be finite numbers, got {self.alphas}")
        self.alphas = [float(a) for a in self.alphas]
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise ConfigError(f"conditions={self.conditions}; valid: {', '.join(CONDITIONS)}")
        for t in self.targets:
            parse_target(t)
        if self.site is not None and self.site not in SITES:
            raise ConfigError(f"site={self.site!r}; valid: {', '.join(SITES)}")
        if self.alpha_unit not in ("raw", "dose"):
            raise ConfigError(f"alpha_unit={self.alpha_unit!r}; valid: raw, dose")
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions={self.positions!r}; valid: {', '.join(POSITIONS)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {self.limit}")
        if self.compile is not None:
            if self.compile not in COMPILE_MODES:
                raise ConfigError(f"compile={self.compile!r}; valid: {', '.join(COMPILE_MODES)} (or leave it unset)")
            if self.positions != "all":
                raise ConfigError("compile steers through output-projection biases, which act at every position: "
                                  "it needs positions=all")


@dataclass
class RunConfig(Common):
    #: MLflow experiment (one per study)
    experiment: str = "emoexp"
    #: output folder for vectors, generations, scores and plots
    out_dir: str = "outputs/run"
    #: extraction settings (keys of ExtractConfig)
    extract: dict[str, Any] = field(default_factory=dict)
    #: generation settings (keys of GenerateConfig)
    generate: dict[str, Any] = field(default_factory=dict)
    #: evaluation settings: metrics, backend
    evaluate: dict[str, Any] = field(default_factory=dict)

    def _common(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Common)}

    def extract_config(self) -> ExtractConfig:
        """The extraction stage's config (common fields + ``extract``)."""
        return _build(ExtractConfig, {**self._common(), "out": str(Path(self.out_dir) / "evs.safetensors"),
                                      **self.extract}, "extract")

    def generate_config(self) -> GenerateConfig:
        """The generation stage's config (common fields + ``generate``)."""
        return _build(GenerateConfig, {**self._common(), "vectors": self.extract_config().out,
                                       "out": str(Path(self.out_dir) / "generations.jsonl"), **self.generate},
                      "generate")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.extract_config()
        self.generate_config()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config as a dict (clear errors for missing or malformed files)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _field_help(cls: type) -> dict[str, str]:
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"#:\s*(.+)\n\s+(\w+)\s*:", src):
            helps[m.group(2)] = m.group(1).strip()
    return helps


def _parse_value(text: str) -> Any:
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str) and "," in v and "=" not in v:
        return [_parse_value(x) for x in v.split(",")]
    return v


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--<field>`` flag per dataclass field (values parsed as YAML;
    lists also as ``a,b,c``; use ``--alphas=-1,0,1`` for leading minus signs)."""
    parser.add_argument("--config", help="YAML file with any of the flags below as keys")
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parser.add_argument(f"--{f.name}", dest=f.name, type=_parse_value, default=argparse.SUPPRESS,
                            metavar=str(hints[f.name]).replace("typing.", ""),
                            help=f"{helps.get(f.name, '')} (default: {default!r})")


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from defaults, the ``--config`` YAML, then explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    hints = typing.get_type_hints(cls)
    for k, v in list(values.items()):
        if k in hints and "list" in str(hints[k]) and v is not None and not isinstance(v, list):
            values[k] = [v]
        if k in hints and str(hints[k]).startswith("str") and v is not None and not isinstance(v, str):
            values[k] = str(v)
    return _build(cls, values, getattr(args, "config", None) or "flags")


def fingerprint(cfg: Any, exclude: tuple[str, ...] = ("devices", "num_nodes", "out", "out_dir")) -> dict:
    """The result-shaping part of a config, and its hash (for resume and rerun checks)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in exclude}
    blob = json.dumps(d, sort_keys=True, default=str)
    return {"fields": json.loads(blob), "sha": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def literal(text: str) -> Any:
    """Parse a Python/YAML literal (used by ``emoexp sweep`` grids)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _parse_value(text)
