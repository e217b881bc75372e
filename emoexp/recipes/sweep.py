"""``emoexp sweep``: a grid over config fields, one ``emoexp run`` (one MLflow parent) per point.

Grid axes are dotted keys of a run config with a YAML list of values::

    emoexp sweep --config configs/default.yaml \\
        --grid "extract.site=[residual, attn, mlp]" \\
        --grid "generate.layers=[null, [10, 11, 12, 13, 14, 15]]"

Points that share the extraction settings share one EV file (extraction runs once; later
points find it finished and only regenerate). Points run one after another in this process;
``--slurm`` writes one config per point and submits them as a SLURM job array instead.
Each point's results land in ``<out_dir>/<point>/`` and a summary table in
``<out_dir>/sweep.md`` / ``sweep.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, RunConfig, load_yaml

__all__ = ["add_arguments", "expand", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="base run config (YAML); default: the embedded default of emoexp run")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[v1, v2]",
                        help="an axis: a dotted config key and a YAML list of values (repeatable)")
    parser.add_argument("--out_dir", default="outputs/sweep", help="sweep folder")
    parser.add_argument("--evs_dir", default=None,
                        help="folder of EV files shared across sweeps (default: <out_dir>/evs)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the base config's)")
    parser.add_argument("--limit", type=int, default=None, help="shrink every point (as emoexp run --limit)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    parser.add_argument("--slurm", action="store_true", help="submit the points as a SLURM job array")
    parser.add_argument("--dry-run", action="store_true", help="print the points (and the array script) only")
    parser.add_argument("--summarize", action="store_true", help="only rewrite sweep.md/csv from finished points")


def _axis(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    if not sep:
        raise ConfigError(f"--grid {text!r}: expected KEY=[v1, v2, ...]")
    try:
        vals = yaml.safe_load(values)
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid {text!r}: values are not YAML ({e})") from e
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"--grid {text!r}: values must be a non-empty YAML list")
    return key.strip(), vals


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {dotted}: {p} is not a section")
    d[parts[-1]] = value


def _slug(point: dict[str, Any]) -> str:
    text = "_".join(f"{k.split('.')[-1]}-{json.dumps(v, separators=(',', ':'))}" for k, v in point.items())
    safe = "".join(c if c.isalnum() or c in "-_.," else "" for c in text)[:80]
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def expand(base: dict[str, Any], axes: list[tuple[str, list[Any]]], out_dir: str,
           evs_dir: str | None = None) -> list[tuple[dict, dict]]:
    """All grid points as ``(point, full config dict)``, validated against :class:`RunConfig`.

    Points with equal extraction settings get the same ``extract.out`` (EVs reused).
    """
    points = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        point = {k: v for (k, _), v in zip(axes, combo)}
        cfg = json.loads(json.dumps(base))
        for k, v in point.items():
            _set(cfg, k, v)
        cfg["out_dir"] = str(Path(out_dir) / _slug(point))
        probe = RunConfig(**cfg)
        ecfg = probe.extract_config()
        from ..config import fingerprint

        sha = fingerprint(ecfg)["sha"]
        cfg.setdefault("extract", {})["out"] = str(Path(evs_dir or Path(out_dir) / "evs") / f"{sha}.safetensors")
        RunConfig(**cfg)  # validates the final point
        points.append((point, cfg))
    return points


def main(args: argparse.Namespace) -> int:
    from .run import DEFAULT, _merge, run, shrink

    base = json.loads(json.dumps(DEFAULT))
    if args.config:
        base = _merge(base, load_yaml(args.config))
    if args.experiment:
        base["experiment"] = args.experiment
    if args.limit is not None:
        base = shrink(base, args.limit)
    axes = [_axis(g) for g in args.grid]
    points = expand(base, axes, args.out_dir, args.evs_dir)
    out = Path(args.out_dir)
    print(f"[emoexp] sweep: {len(points)} point(s) over {', '.join(k for k, _ in axes) or 'nothing'}")
    for point, cfg in points:
        print(f"  {cfg['out_dir']}: {point}")
    if args.summarize:
        print(f"[emoexp] wrote {summarize(points, out)}")
        return 0
    if args.dry_run and not args.slurm:
        return 0
    if args.slurm:
        return _submit(points, out, args.dry_run)
    for point, cfg in points:
        print(f"[emoexp] sweep point {point}")
        run(RunConfig(**cfg), mlflow=not args.no_mlflow)
    summarize(points, out)
    return 0


def _submit(points: list[tuple[dict, dict]], out: Path, dry_run: bool) -> int:
    import subprocess
    import sys

    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (_, cfg) in enumerate(points):
        f = cfg_dir / f"point-{i:03d}.yaml"
        f.write_text(yaml.safe_dump(cfg, sort_keys=False))
        files.append(str(f))
    cmd = [sys.executable, "-m", "emoexp", "submit", "run", "--template", "array", "--configs", *files]
    if dry_run:
        cmd.append("--dry-run")
    return subprocess.run(cmd, check=False).returncode


def summarize(points: list[tuple[dict, dict]], out: Path) -> Path:
    """``sweep.csv`` / ``sweep.md``: per point and target, target probability gain over
    unsteered, the prompt baseline's, and topic / repetition ratios, at the best alpha."""
    import pandas as pd

    rows = []
    for point, cfg in points:
        agg_path = Path(cfg["out_dir"]) / "aggregate.csv"
        if not agg_path.is_file():
            continue
        rows.extend({**{k: json.dumps(v) for k, v in point.items()}, **r} for r in best_per_target(pd.read_csv(agg_path)))
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    (out / "sweep.md").write_text(_markdown(table) if len(table) else "no results\n")
    return out / "sweep.md"


def _markdown(table: Any) -> str:
    """A Markdown table (no tabulate dependency); floats with 3 decimals."""
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def best_per_target(agg: Any, min_topic_ratio: float = 0.8, max_rep_ratio: float = 1.5) -> list[dict[str, Any]]:
    """For each target: the alpha with the largest target-probability gain over unsteered among
    those keeping topic >= ``min_topic_ratio`` x and repetition <= ``max_rep_ratio`` x unsteered."""
    import math

    unst = agg[agg["condition"] == "unsteered"].iloc[0]
    out = []
    for tgt in sorted(agg.loc[agg["condition"] == "steered", "target"].dropna().unique()):
        col = f"p_{tgt}"
        if col not in agg.columns:
            continue
        base = float(unst[col])
        prompt = agg[(agg["condition"] == "prompt") & (agg["target"] == tgt)]
        rows = agg[(agg["condition"] == "steered") & (agg["target"] == tgt)]
        best: dict[str, Any] = {"target": tgt, "unsteered": base,
                                "prompt_gain": float(prompt[col].iloc[0]) - base if len(prompt) else math.nan}
        cands = []
        for _, r in rows.iterrows():
            topic_ok = "topic" not in agg or float(r["topic"]) >= min_topic_ratio * float(unst["topic"])
            rep_ok = "repetition" not in agg or float(r["repetition"]) <= max_rep_ratio * max(float(unst["repetition"]), 1e-3)
            cands.append((topic_ok and rep_ok, float(r[col]) - base, r))
        ok = [c for c in cands if c[0]]
        pick = max(ok or cands, key=lambda c: c[1])
        best.update(alpha=float(pick[2]["alpha"]), gain=pick[1], within_limits=pick[0],
                    topic_ratio=float(pick[2]["topic"]) / float(unst["topic"]) if "topic" in agg else math.nan,
                    rep_ratio=float(pick[2]["repetition"]) / max(float(unst["repetition"]), 1e-3)
                    if "repetition" in agg else math.nan)
        best["beats_prompt"] = bool(best["gain"] > best["prompt_gain"])
        out.append(best)
    return out
