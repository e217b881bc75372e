"""``emoexp evaluate``: score generation files with the paper's metrics.

Inputs (any mix):

- our generation JSONL: one object per line with ``response`` and, as available, ``id``,
  ``index``, ``query``, ``query_emotion``, ``condition``, ``target``, ``weights``, ``alpha``,
  ``site``, ``model``, ``n_tokens``;
- the paper authors' results folder: ``base/<family>/<alpha>.json`` and
  ``emotion/<family>/<alpha>/<emotion>.json``, each a list of answers aligned with
  EmotionQuery+ (``--queries``; default ``<results>/../dataset/EmotionQuery+/EmotionQuery+.json``).

- a finished ``emoexp run`` output folder, or ``--run_id`` of its MLflow parent: re-scored with
  ``--eps`` (default ``minilm-smollm2``) without generating again, into ``<folder>/rescored/<scorer>/``
  and the same MLflow parent (:mod:`emoexp.recipes.rescore`).

Outputs, next to ``--out`` (``.jsonl`` or ``.csv``): the scored rows, then
``<stem>.aggregate.csv`` and ``<stem>.aggregate.md`` (means with bootstrap 95% intervals per
``--by`` group) and ``<stem>.meta.json`` (backends, models, counts). If the judge becomes
unreachable, everything finished is still written and the command exits with status 1.

Example:
    emoexp evaluate ../shared/data/official/results --out outputs/official/scores.jsonl --metrics eps,topic
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from ..eval.normalise import strip_special
from ..vocab import DEFAULT_EPS, EMOTIONS, Metric

__all__ = ["Args", "main", "read_generations", "read_jsonl", "read_official", "strip_special"]

_COLUMNS = ("id", "index", "query", "query_emotion", "condition", "target", "weights", "alpha", "site", "model",
            "response", "n_tokens")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of our generation JSONL (blank lines skipped; a bad line is an error naming it)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{ln}: not JSON ({e})") from None
            if not isinstance(row, dict) or "response" not in row:
                raise ValueError(f"{path}:{ln}: a generation row needs a 'response' field")
            rows.append({**{c: None for c in _COLUMNS}, **row, "source": str(path)})
    return rows


def _emotionquery_plus_emotion(index: int, n: int) -> str | None:
    # EmotionQuery+ (400 queries): 50 per emotion in EMOTIONS order, then 150 everyday ones.
    if n != 400:
        return None
    return EMOTIONS[index // 50] if index < 250 else "neutral"


def read_official(root: str | Path, queries: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows from the authors' results layout, aligned with the EmotionQuery+ queries.

    ``base/<family>/<alpha>.json`` gives ``target="base"``; ``emotion/<family>/<alpha>/<e>.json``
    gives ``target=e``; ``condition`` is ``unsteered`` at alpha 0, else ``steered``.

    Raises:
        ValueError: a file outside the layout, or a list whose length differs from the queries'.
    """
    root = Path(root)
    if (root / "results").is_dir():
        root = root / "results"
    files = sorted(root.rglob("*.json"))
    if not files:
        raise ValueError(f"{root}: no .json files (expected base/<family>/<alpha>.json or "
                         "emotion/<family>/<alpha>/<emotion>.json)")
    if queries is None:
        results = next((p for p in [root, *root.parents] if p.name == "results"), root)
        queries = results.parent / "dataset" / "EmotionQuery+" / "EmotionQuery+.json"
    qpath = Path(queries)
    if not qpath.is_file():
        raise ValueError(f"{qpath}: EmotionQuery+ queries not found; pass --queries")
    qs = json.loads(qpath.read_text(encoding="utf-8"))
    rows = []
    for f in files:
        parts = f.parts
        if len(parts) >= 3 and parts[-3] == "base":
            family, alpha, target = parts[-2], f.stem, "base"
        elif len(parts) >= 4 and parts[-4] == "emotion":
            family, alpha, target = parts[-3], parts[-2], f.stem
        else:
            raise ValueError(f"{f}: not in the authors' layout (base/<family>/<alpha>.json or "
                             "emotion/<family>/<alpha>/<emotion>.json)")
        answers = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(answers, list) or len(answers) != len(qs):
            got = len(answers) if isinstance(answers, list) else type(answers).__name__
            raise ValueError(f"{f}: {got} answers for {len(qs)} queries in {qpath.name}; they must align")
        a = float(alpha)
        for i, (q, ans) in enumerate(zip(qs, answers)):
            text, k = strip_special(ans)
            rows.append({"id": f"EmotionQuery+/{i}", "index": i, "query": q,
                         "query_emotion": _emotionquery_plus_emotion(i, len(qs)),
                         "condition": "unsteered" if a == 0 else "steered", "target": target, "weights": None,
                         "alpha": a, "site": "attention-output (authors' code)", "model": family, "response": text,
                         "n_tokens": None, "special_tokens_stripped": k, "source": str(f)})
    return rows


def read_generations(path: str | Path, queries: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows from a JSONL file or an authors' results folder."""
    p = Path(path)
    if p.is_dir():
        return read_official(p, queries)
    if p.suffix in (".jsonl", ".ndjson"):
        return read_jsonl(p)
    raise ValueError(f"{p}: expected a generation .jsonl file or the authors' results folder")


@dataclass
class Args:
    """``emoexp evaluate``: score generation files (ours or the authors' layout)."""

    inputs: list[str] = field(default_factory=list, metadata={
        "positional": "*", "help": "generation .jsonl files, the authors' results folder, or an emoexp run folder"})
    run_id: str | None = None
    """An emoexp MLflow parent run to re-score with --eps (its generations are read from its child runs)."""
    mlflow: bool = True
    """Re-scoring a run: log the new scores into the run's MLflow parent."""
    out: str | None = None
    """Scored rows (.jsonl or .csv), aggregates next to it (default: <input>.scores.jsonl beside a file input,
    outputs/evaluate/<folder>.scores.jsonl for a results folder)."""
    queries: str | None = None
    """EmotionQuery+.json for the authors' layout (default: found beside their results)."""
    metrics: list[Metric] | None = None
    """Metrics (default: all that the inputs and backends allow)."""
    backend: Literal["offline", "paper"] = "offline"
    """Backend preset."""
    eps: str | None = None
    """EPS backend: minilm-smollm2 (default) | minilm | minilm-written | minilm-zeroshot | embed:<encoder> | nli:<model>."""
    topic: str | None = None
    """Topic backend: minilm | embed:<encoder> | judge | hf:<model>."""
    eas: str | None = None
    """EAS judge: judge | hf:<model> (none offline)."""
    ppl_model: str | None = None
    """Perplexity reference model spec, or 'studied' for each row's own model."""
    judge_url: str | None = None
    """Judge base URL (default $EMOEXP_JUDGE_BASE_URL); the key is read from $EMOEXP_JUDGE_API_KEY only."""
    judge_model: str | None = None
    """Judge model (default $EMOEXP_JUDGE_MODEL)."""
    judge_timeout: PositiveFloat = 60.0
    """Seconds per judge request."""
    judge_retries: NonNegativeInt = 3
    """Retries of a failed judge request."""
    by: list[str] = field(default_factory=lambda: ["model", "condition", "target", "alpha"])
    """Aggregate group columns."""
    limit: PositiveInt | None = None
    """Score only the first N rows of each input (smoke runs)."""
    max_length: PositiveInt | None = None
    """Perplexity context cap in tokens."""
    batch_size: PositiveInt = 8
    """Perplexity batch size."""
    n_boot: PositiveInt = 1000
    """Bootstrap resamples of the confidence intervals."""
    seed: NonNegativeInt = 0
    """Bootstrap seed."""
    progress: bool = True
    """Show progress bars."""


def _backend(args: Args, metrics: list[str] | None) -> dict[str, Any]:
    from ..eval.backends import Backends
    from ..eval.judge import JudgeConfig

    over: dict[str, Any] = {"preset": args.backend, "batch_size": args.batch_size, "max_length": args.max_length,
                            "progress": args.progress}
    for key in ("eps", "topic", "eas"):
        if getattr(args, key):
            over[key] = getattr(args, key)
    if args.ppl_model and args.ppl_model != "studied":
        over["perplexity"] = args.ppl_model
    b = Backends.resolve(over)
    wanted = set(metrics) if metrics else {"topic", "topic_consistency", "eas"}
    http = (b.eas == "judge" and "eas" in wanted) or (b.topic == "judge" and wanted & {"topic", "topic_consistency"})
    if http:
        over["judge"] = JudgeConfig.from_env(base_url=args.judge_url, model=args.judge_model,
                                             timeout=args.judge_timeout, max_retries=args.judge_retries)
    return over


def _write(df: pd.DataFrame, out: Path, args: Args, meta: dict[str, Any]) -> None:
    from ..eval.stats import aggregate, to_markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        df.to_json(out, orient="records", lines=True, force_ascii=False)
    by = list(args.by)
    agg = aggregate(df, by=by, n_boot=args.n_boot, seed=args.seed)
    stem = out.with_suffix("")
    agg.to_csv(f"{stem}.aggregate.csv", index=False)
    header = "".join(f"- {m}: {d.get('backend')} ({d.get('model')})\n" for m, d in meta["backends"].items())
    Path(f"{stem}.aggregate.md").write_text(
        f"# Scores: mean [bootstrap 95% CI, {args.n_boot} resamples, seed {args.seed}]\n\n{header}\n"
        f"{to_markdown(agg)}", encoding="utf-8")
    Path(f"{stem}.meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def main(args: Args) -> int:
    """Run ``emoexp evaluate``; returns the exit status (1: the judge stopped answering, 2: bad input)."""
    from ..eval.judge import JudgeError

    try:
        return _run(args)
    except (ValueError, TypeError, JudgeError, OSError) as e:
        print(f"emoexp evaluate: error: {e}", file=sys.stderr)
        return 2


def _is_run_folder(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "generations.jsonl").exists() or (p / "scores.jsonl.work").is_dir())


def _run(args: Args) -> int:
    from ..eval import ScoringInterrupted, resolve_target, score

    if args.run_id or any(_is_run_folder(p) for p in args.inputs):
        from .rescore import rescore

        if args.run_id and args.inputs or len(args.inputs) > 1:
            raise ValueError("re-scoring takes one run: an output folder or --run_id, not both or several")
        rescore(args.inputs[0] if args.inputs else None, args.eps or DEFAULT_EPS, run_id=args.run_id, mlflow=args.mlflow)
        return 0
    if not args.inputs:
        raise ValueError("nothing to score: give generation files, the authors' results folder, a run folder or --run_id")

    rows: list[dict[str, Any]] = []
    for path in args.inputs:
        got = read_generations(path, args.queries)
        rows += got[:args.limit] if args.limit else got
    if not rows:
        print("emoexp evaluate: no rows to score", file=sys.stderr)
        return 2
    metrics = list(args.metrics) if args.metrics else None
    over = _backend(args, metrics)
    # A mix's weights name its target more precisely than its name.
    targets = [r["weights"] if isinstance(r.get("weights"), dict) else r.get("target") for r in rows]
    has_t = any(resolve_target(t)[0] for t in targets)
    has_q = any(isinstance(r.get("query"), str) for r in rows)
    per_model = args.ppl_model == "studied"
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        if per_model and not r.get("model"):
            raise ValueError(f"--ppl_model studied: row {i} of {r.get('source')} has no 'model' field")
        groups.setdefault(r.get("model") if per_model else None, []).append(i)
    frames: list[pd.DataFrame] = []
    meta: dict[str, Any] = {"inputs": list(args.inputs), "rows": len(rows), "backends": {}, "truncated": {},
                            "error": None}
    status = 0
    for model, idx in groups.items():
        b = dict(over, perplexity=model) if per_model else over
        try:
            df = score([rows[i]["response"] for i in idx], [rows[i].get("query") for i in idx] if has_q else None,
                       [targets[i] for i in idx] if has_t else None, metrics=metrics, backend=b)
        except ScoringInterrupted as e:
            df, status = e.partial, 1
            meta["error"] = str(e)
            print(f"emoexp evaluate: {e}", file=sys.stderr)
        df.index = idx
        frames.append(df)
        meta["backends"].update(df.attrs.get("backends", {}))
        for m, k in df.attrs.get("truncated", {}).items():
            meta["truncated"][m] = meta["truncated"].get(m, 0) + k
        if status:
            break
    scores = pd.concat(frames).reindex(range(len(rows)))
    base = pd.DataFrame(rows).drop(columns=[c for c in scores.columns if c in rows[0]], errors="ignore")
    df = pd.concat([base, scores], axis=1)
    df["issues"] = df["issues"].fillna("not scored: stopped after the judge failed")
    meta["rows_with_issues"] = int((df["issues"] != "").sum())
    first = Path(args.inputs[0])
    out = Path(args.out) if args.out else (first.with_name(first.stem + ".scores.jsonl") if first.is_file()
                                           else Path("outputs") / "evaluate" / f"{first.name}.scores.jsonl")
    _write(df, out, args, meta)
    print(f"wrote {out} ({len(df)} rows), {out.with_suffix('')}.aggregate.md/.csv, .meta.json", file=sys.stderr)
    return status
