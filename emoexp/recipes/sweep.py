"""``emoexp sweep``: a grid over config fields, one ``emoexp run`` (one MLflow parent) per point.

The sweep takes every ``emoexp run`` flag (the base config) plus grid axes: dotted keys of a
run config with a YAML list of values::

    emoexp sweep --config configs/default.yaml \\
        --grid "extract.site=[residual, attn, mlp]" \\
        --grid "generate.layers=[null, [10, 11, 12, 13, 14, 15]]"

Each point is an ordinary run: its output folder and MLflow parent follow from its identity,
so a point that was run before is resumed or reused, never redone. Points that share their
extraction settings share one EV file in ``evs_dir`` (extracted once; another process that
needs it meanwhile waits for it). Points run one after another in this process; ``slurm``
writes one config per point and submits them as a SLURM job array instead. The summary
(``sweep.md`` / ``sweep.csv``: per point and target, the best target-probability gain within
the topic and repetition limits) goes to ``sweep_dir``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, from_dict, parse, to_dict
from ..eval.stats import best_per_target
from ..redact import log

__all__ = ["Args", "SweepConfig", "best_per_target", "expand", "main", "parse_args", "summarize"]


@dataclass
class SweepConfig(RunConfig):
    """``emoexp sweep``: the base run config plus grid axes."""

    grid: list[str] = field(default_factory=list, metadata={"append": True})
    """An axis: a dotted config key and a YAML list of values, 'extract.site=[residual, attn]' (repeatable)."""
    sweep_dir: str = "outputs/sweep"
    """Folder of the summary (sweep.md, sweep.csv) and of the point configs."""
    slurm: bool = False
    """Submit the points as a SLURM job array instead of running them here."""
    dry_run: bool = False
    """Print the points (and the array script with slurm) only."""
    summarize: bool = False
    """Only rewrite sweep.md/csv from finished points."""


Args = SweepConfig
_SWEEP_ONLY = ("grid", "sweep_dir", "slurm", "dry_run", "summarize")


def parse_args(argv: list[str], prog: str = "emoexp sweep") -> SweepConfig:
    """The sweep's flags: every ``emoexp run`` flag, plus ``--grid`` (repeatable, each value one string)."""
    return parse(SweepConfig, argv, prog=prog)


def _axis(text: str) -> tuple[str, list[Any]]:
    import yaml

    key, sep, values = text.partition("=")
    if not sep:
        raise ConfigError(f"--grid {text!r}: expected KEY=[v1, v2, ...]")
    try:
        vals = yaml.safe_load(values)
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid {text!r}: values are not YAML ({' '.join(str(e).split())})") from e
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"--grid {text!r}: values must be a non-empty YAML list")
    return key.strip(), vals


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--grid {dotted}: {p} is not a section")
    d[parts[-1]] = value


def expand(cfg: SweepConfig) -> list[tuple[dict[str, Any], RunConfig]]:
    """All grid points as ``(point, run config)``, each validated as a run config.

    Raises:
        ConfigError: a bad axis, or a value its field does not accept (names the axis).
    """
    base = {k: v for k, v in to_dict(cfg).items() if k not in _SWEEP_ONLY}
    base["limit"] = None  # already applied to extract.limit / generate.limit
    base["out_dir"] = None  # each point's folder follows from its identity
    base.setdefault("evs_dir", None)
    base["evs_dir"] = base["evs_dir"] or str(Path(cfg.sweep_dir) / "evs")
    axes = [_axis(g) for g in cfg.grid]
    points = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        point = {k: v for (k, _), v in zip(axes, combo)}
        values = json.loads(json.dumps(base))
        for k, v in point.items():
            _set(values, k, v)
        try:
            points.append((point, from_dict(RunConfig, values, where=f"grid point {point}")))
        except ConfigError as e:
            raise ConfigError(str(e)) from None
    return points


def main(cfg: SweepConfig) -> int:
    from .run import prepare, run

    points = expand(cfg)
    out = Path(cfg.sweep_dir)
    log(f"sweep: {len(points)} point(s) over {', '.join(_axis(g)[0] for g in cfg.grid) or 'nothing'}")
    for point, rc in points:
        log(f"  {point}")
    if cfg.summarize:
        log(f"wrote {summarize([(p, prepare(rc).out_dir) for p, rc in points], out)}")
        return 0
    if cfg.slurm:
        return _submit(points, out, cfg.dry_run)
    if cfg.dry_run:
        return 0
    folders = []
    for point, rc in points:
        log(f"sweep point {point}")
        folders.append((point, run(rc)))
    log(f"wrote {summarize(folders, out)}")
    return 0


def _submit(points: list[tuple[dict, RunConfig]], out: Path, dry_run: bool) -> int:
    import subprocess
    import sys

    import yaml

    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (_, rc) in enumerate(points):
        f = cfg_dir / f"point-{i:03d}.yaml"
        f.write_text(yaml.safe_dump(to_dict(rc), sort_keys=False))
        files.append(str(f))
    cmd = [sys.executable, "-m", "emoexp", "submit", "run", "--template", "array", "--configs", *files]
    if dry_run:
        cmd += ["--dry_run", "true"]
    return subprocess.run(cmd, check=False).returncode


def summarize(points: list[tuple[dict, Path]], out: Path) -> Path:
    """``sweep.csv`` / ``sweep.md``: per point and target, target probability gain over
    unsteered, the prompt baseline's, and topic / repetition ratios, at the best alpha."""
    import pandas as pd

    rows = []
    for point, folder in points:
        agg_path = Path(folder) / "aggregate.csv"
        if not agg_path.is_file():
            continue
        agg = pd.read_csv(agg_path)
        for condition in ("steered", "prompt_steered"):
            if (agg["condition"] == condition).any():
                rows.extend({**{k: json.dumps(v) for k, v in point.items()}, "folder": str(folder), **r}
                            for r in best_per_target(agg, condition=condition))
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    (out / "sweep.md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n" if len(table)
                                  else "no results\n")
    return out / "sweep.md"
