"""The names shared by the configuration and the core, as ``Literal`` types and tuples.

Torch-free, so that ``emoexp --help`` and config parsing never import torch. Each tuple is
the ``Literal``'s values in a fixed order.

Example:
    >>> EMOTIONS
    ('anger', 'disgust', 'fear', 'joy', 'sadness')
    >>> SITES
    ('residual', 'attn', 'mlp')
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ACCELERATORS",
    "ALPHA_UNITS",
    "CAPTURES",
    "COMPILE_MODES",
    "CONDITIONS",
    "DEFAULT_CONDITIONS",
    "DEFAULT_EPS",
    "DTYPES",
    "EMOTIONS",
    "METHODS",
    "METRICS",
    "POSITIONS",
    "PROMPT_FORMATS",
    "SCOPES",
    "SITES",
    "STEERED_CONDITIONS",
    "STRATEGIES",
    "WEIGHTINGS",
    "Accelerator",
    "AlphaUnit",
    "Capture",
    "CompileMode",
    "Condition",
    "Dtype",
    "Emotion",
    "Method",
    "Metric",
    "Positions",
    "PromptFormat",
    "Scope",
    "Site",
    "Strategy",
    "Weighting",
]

#: The five emotions of the paper, in a fixed order.
Emotion = Literal["anger", "disgust", "fear", "joy", "sadness"]
EMOTIONS: tuple[str, ...] = get_args(Emotion)

#: Where a vector is read or added: the block output, the attention output, the MLP output.
Site = Literal["residual", "attn", "mlp"]
SITES: tuple[str, ...] = get_args(Site)

#: Tokens averaged at extraction: the response, the prompt, both, or the last prompt token.
Scope = Literal["response", "prompt", "all", "last"]
SCOPES: tuple[str, ...] = get_args(Scope)

#: Steered positions: ``all``, or ``generated`` (the last prompt token and every generated one).
Positions = Literal["all", "generated"]
POSITIONS: tuple[str, ...] = get_args(Positions)

#: Where the conditioning text of the neutral / emotional pair goes.
Strategy = Literal["system", "user", "prefill"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

#: How a prompt is rendered: the tokenizer's chat template, a plain-text template (base models), or auto.
PromptFormat = Literal["auto", "chat", "plain"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)

#: Generation conditions: no steering, EV steering, the prompt baseline (the emotional prompt, no
#: steering), and both at once (the emotional prompt plus EV steering).
Condition = Literal["unsteered", "steered", "prompt", "prompt_steered"]
CONDITIONS: tuple[str, ...] = get_args(Condition)
#: The conditions run by default.
DEFAULT_CONDITIONS: tuple[str, ...] = ("unsteered", "steered", "prompt")
#: The conditions that steer.
STEERED_CONDITIONS: tuple[str, ...] = ("steered", "prompt_steered")

#: How activations are captured at extraction: while decoding, or in a forward pass afterwards.
Capture = Literal["decode", "forward"]
CAPTURES: tuple[str, ...] = get_args(Capture)

#: Average over queries of per-query token means (the paper's), or over all tokens.
Weighting = Literal["query", "token"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)

#: How an EV is formed from the responses: the mean paired difference (the paper's), or the first
#: principal direction of the per-query paired differences (as repeng does).
Method = Literal["mean", "pca"]
METHODS: tuple[str, ...] = get_args(Method)

#: alpha x EV (``raw``), or a per-layer relative dose (``dose``).
AlphaUnit = Literal["raw", "dose"]
ALPHA_UNITS: tuple[str, ...] = get_args(AlphaUnit)

Accelerator = Literal["auto", "cpu", "gpu", "cuda"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)

#: torch.compile modes of the fast generation path.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

#: Generation engines: transformers ``generate`` with hooks, or vLLM with steering in its graph.
Engine = Literal["transformers", "vllm"]
ENGINES: tuple[str, ...] = get_args(Engine)

#: Metrics of :func:`emoexp.score`.
Metric = Literal["eps", "tec", "topic", "perplexity", "repetition", "eas"]
METRICS: tuple[str, ...] = get_args(Metric)

#: The default emotion scorer (``emoexp.eval.classifiers``): MiniLM beside SmolLM2's layer-30
#: states, since 2026-12-07 (``minilm`` from 2026-12-06, ``minilm-written`` before).
DEFAULT_EPS = "minilm-smollm2"
