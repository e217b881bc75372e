"""Evaluation: one module per metric, the backends beside them, and ``score()`` composing them.

| module | what |
|---|---|
| :mod:`.emotion` | EPS (emotion probabilities, intensity) and TEC (the target's confidence) |
| :mod:`.classifiers` | the emotion classifiers behind EPS: MiniLM heads (``minilm-smollm2``, the default, also reads SmolLM2's states), zero-shot, prototypes, NLI |
| :mod:`.topic` | topic consistency (embedding cosine, or a judge) |
| :mod:`.perplexity` | perplexity under a reference LM (the studied model in the pipeline) |
| :mod:`.repetition` | repeated 4-grams, distinct-1/2 |
| :mod:`.judge` | the LLM judge (EAS, judged topic): OpenAI-compatible endpoint or a local model |
| :mod:`.encoders` | MiniLM sentence embeddings |
| :mod:`.probe` | a causal LM's reading of a text (SmolLM2's mean hidden state, for ``minilm-smollm2``) |
| :mod:`.backends` | which backend computes each metric (presets ``offline``, ``paper``) |
| :mod:`.scoring` | ``score()``: the metrics for a list of responses, one row each |
| :mod:`.stats` | group means with bootstrap CIs (``scipy.stats.bootstrap``), paired gains, markdown tables |
| :mod:`.summary` | a scored run in brief: the terminal tables and the MLflow parent's summary metrics |
| :mod:`.cache` | scores cached by content |
| :mod:`.normalise` | text as the scorer reads it (emoji named, loops shortened, markup dropped) |
| :mod:`.real_text` | the hand-labelled real text (replies read blind to their target) |
| :mod:`.training` | fitting the emotion head; cross-validation grouped by model family |
| :mod:`.classification` | per-label precision, recall, F1 and calibration against the truth |
| :mod:`.validate` | ``emoexp validate-scorer``: the emotion scorer checked on labelled text |

The ``evaluate`` modules in ``emoexp/metrics/`` are thin wrappers over these functions. Names
load on first use, so ``emoexp validate-scorer --help`` answers without importing torch.

Example:
    >>> from emoexp.eval import score, aggregate                       # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"aggregate": "stats", "bootstrap_ci": "stats", "gain": "stats", "to_markdown": "stats",
         "PRESETS": "backends", "Backends": "backends", "resolve_target": "emotion", "METRICS": "scoring",
         "ScoringInterrupted": "scoring", "score": "scoring"}

__all__ = ["METRICS", "PRESETS", "Backends", "ScoringInterrupted", "aggregate", "bootstrap_ci", "gain", "resolve_target",
           "score", "to_markdown"]


__getattr__ = lazy_getattr(__name__, _LAZY)
