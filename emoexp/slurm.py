"""``emoexp submit``: render a SLURM batch script from a config and submit it with ``sbatch``.

The number of Slurm tasks per node and of nodes come from the config's ``devices`` and
``num_nodes`` (Fabric needs ``--ntasks-per-node == devices`` and ``--nodes == num_nodes``);
the script runs ``srun <this python> -m emoexp <stage> --config <abs path> [extra flags]``, so
it works without activating a venv. Templates live in ``slurm/`` (``string.Template``).

Example:
    emoexp submit extract --config configs/extract/smollm2-1gpu.yaml --partition gpu --time 02:00:00
    emoexp submit run --configs a.yaml b.yaml --dry_run true -- --max_new_tokens 32
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from jsonargparse.typing import PositiveInt

from .redact import has_secret, is_secret_key

__all__ = ["STAGES", "TEMPLATES", "Args", "Job", "SubmitError", "main", "parse_args", "plan", "render", "submit"]

STAGES = ("extract", "generate", "run", "sweep")
#: template name -> file in the template folder
TEMPLATES = {"single": "single_node.sbatch", "multi": "multi_node.sbatch", "array": "array.sbatch"}
#: variables copied into the script when set where ``emoexp submit`` runs (sbatch exports the whole
#: environment anyway; writing them down keeps requeued and re-submitted scripts reproducible)
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "EMOEXP_CACHE",
                   "MLFLOW_TRACKING_URI")
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
LOCAL_CLUSTER_HINT = ("for a local one-node test cluster (as root): bash scripts/slurm-cluster.sh install && "
                      "bash scripts/slurm-cluster.sh start, then export SLURM_CONF from .cache/slurm/env "
                      "(see docs/slurm.md)")


class SubmitError(ValueError):
    """A submission that cannot work (bad config, template or environment)."""


@dataclass
class Job:
    """What gets rendered: resources shared by all configs, and the configs themselves."""

    stage: str
    template: str  # a name in TEMPLATES or a path to a template file
    configs: list[Path]
    devices: int
    num_nodes: int
    accelerator: str
    extra: list[str]
    gpus_per_rank: int = 1  # engine=vllm: tensor_parallel_size x pipeline_parallel_size GPUs under each rank


def template_dir() -> Path:
    """The folder holding the templates: ``$EMOEXP_SLURM_TEMPLATES``, the repository's ``slurm/``,
    or ``emoexp/templates`` inside an installed package."""
    env = os.environ.get("EMOEXP_SLURM_TEMPLATES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "slurm", here / "templates"]
    for c in candidates:
        if (c / TEMPLATES["single"]).is_file():
            return c
    raise SubmitError(f"no Slurm templates found (looked in {', '.join(map(str, candidates))}); "
                      "set EMOEXP_SLURM_TEMPLATES or pass --template <file>")


def _template_file(name: str) -> Path:
    if name in TEMPLATES:
        return template_dir() / TEMPLATES[name]
    if Path(name).is_file():
        return Path(name)
    raise SubmitError(f"unknown template {name!r}: use one of {', '.join(TEMPLATES)} or a path to a template file")


def _stage_resources(stage: str, config: Path, extra: list[str]) -> tuple[int, int, str, int]:
    """``(devices, num_nodes, accelerator, gpus per rank)`` of one config, validated by the stage's dataclass.
    A rank whose vLLM engine splits the model over ``tensor_parallel_size x pipeline_parallel_size``
    GPUs needs that many."""
    from . import config as c
    from .recipes import sweep

    classes: dict[str, type] = {"extract": c.ExtractConfig, "generate": c.GenerateConfig, "run": c.RunConfig}
    try:
        data = c.load_yaml(config)
        if stage in ("extract", "generate") and {"extract", "generate", "evaluate"} & set(data):
            raise SubmitError(f"{config} is an `emoexp run` config (it has extract/generate sections): submit it "
                              "with `emoexp submit run --config ...`")
        argv = ["--config", str(config), *extra]
        cfg: Any = sweep.parse_args(argv) if stage == "sweep" else c.parse(classes[stage], argv)
    except c.ConfigError as e:
        raise SubmitError(str(e) if str(config) in str(e) else f"{config}: {e}") from e
    engines = [x for x in (cfg, getattr(cfg, "extract", None), getattr(cfg, "generate", None))
               if getattr(x, "engine", None) == "vllm"]
    per_rank = max((x.tensor_parallel_size * x.pipeline_parallel_size for x in engines), default=1)
    return int(cfg.devices), int(cfg.num_nodes), str(cfg.accelerator), per_rank


def plan(stage: str, configs: list[str], template: str | None = None, extra: list[str] | None = None) -> Job:
    """Validate the stage, configs and template, and read the resources from the configs.

    Raises:
        SubmitError: unknown stage or template, missing/invalid config, configs that ask for
            different resources in one array, or a single-node template with num_nodes > 1.
    """
    extra = list(extra or [])
    if stage not in STAGES:
        raise SubmitError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    if not configs:
        raise SubmitError("no config given: pass --config X.yaml (or --configs a.yaml b.yaml for an array)")
    paths = [Path(c).resolve() for c in configs]
    for p in paths:
        if not p.is_file():
            raise SubmitError(f"config file not found: {p}")
    resources = {p: _stage_resources(stage, p, extra) for p in paths}
    distinct = set(resources.values())
    if len(distinct) > 1:
        listing = "; ".join(f"{p.name}: devices={d} num_nodes={n} accelerator={a} gpus per rank={g}"
                            for p, (d, n, a, g) in resources.items())
        raise SubmitError(f"one job array needs the same devices/num_nodes/accelerator in every config ({listing})")
    devices, num_nodes, accelerator, per_rank = distinct.pop()
    if devices < 1 or num_nodes < 1:
        raise SubmitError(f"devices and num_nodes must be >= 1, got devices={devices} num_nodes={num_nodes}")
    if template is None:
        template = "array" if len(paths) > 1 else ("multi" if num_nodes > 1 else "single")
    _template_file(template)
    if template == "single" and num_nodes > 1:
        raise SubmitError(f"num_nodes={num_nodes} needs --template multi (single_node runs on one node)")
    if template != "array" and len(paths) > 1:
        raise SubmitError(f"{len(paths)} configs need --template array")
    return Job(stage, template, paths, devices, num_nodes, accelerator, extra, per_rank)


def _sbatch_options(job: Job, opts: Args) -> list[str]:
    """Optional ``#SBATCH`` lines (partition, account, time, GPUs, CPUs, memory, anything else)."""
    lines: list[str] = []
    if opts.partition:
        lines.append(f"--partition={opts.partition}")
    if opts.account:
        lines.append(f"--account={opts.account}")
    if opts.time:
        if not _TIME.match(opts.time):
            raise SubmitError(f"--time {opts.time!r}: use MM, HH:MM:SS or D-HH:MM:SS")
        lines.append(f"--time={opts.time}")
    gpus = opts.gpus_per_node
    need = job.devices * job.gpus_per_rank
    if gpus is None and job.accelerator in ("gpu", "cuda"):
        gpus = need
    if gpus:
        if gpus < need and job.gpus_per_rank == 1:
            raise SubmitError(f"--gpus-per-node {gpus} < devices={job.devices}: each process needs its own GPU")
        if gpus < need:
            raise SubmitError(f"--gpus-per-node {gpus} < {need}: each of the devices={job.devices} processes needs "
                              f"{job.gpus_per_rank} GPUs (vLLM's TP x PP)")
        lines.append(f"--gpus-per-node={gpus}")
    if opts.cpus_per_task:
        lines.append(f"--cpus-per-task={opts.cpus_per_task}")
    if opts.mem:
        lines.append(f"--mem={opts.mem}")
    lines += opts.sbatch_opt or []
    return [f"#SBATCH {line}" for line in lines]


def _env_exports(opts: Args) -> list[str]:
    """``export`` lines: pass-through variables set here (those holding credentials are left to
    the inherited environment), ``hf_offline`` and ``env`` (secrets refused)."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k) and not has_secret(os.environ[k])}
    if opts.hf_offline:
        env["HF_HUB_OFFLINE"] = "1"
    for item in opts.env or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise SubmitError(f"--env {item.split('=')[0]!r}: expected NAME=VALUE")
        if is_secret_key(key) or has_secret(value):
            raise SubmitError(f"--env {key}: looks like a secret; secrets are never written into job scripts: "
                              f"`export {key}=...` before `emoexp submit` and the job inherits it")
        env[key] = value
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def render(job: Job, opts: Args) -> str:
    """The batch script for ``job`` (``opts``: the parsed ``emoexp submit`` options)."""
    base = [sys.executable, "-m", "emoexp", job.stage]
    extra = "".join(" " + shlex.quote(a) for a in job.extra)
    values = {
        "stage": job.stage,
        "job_name": opts.job_name or f"emoexp-{job.stage}",
        "nodes": job.num_nodes,
        "ntasks_per_node": job.devices,
        "accelerator": job.accelerator,
        "workdir": shlex.quote(str(Path.cwd())),
        "log_dir": str(Path(opts.log_dir).resolve()),
        "signal_seconds": opts.signal_seconds,
        "sbatch_options": "\n".join(_sbatch_options(job, opts)),
        "env_exports": "\n".join(_env_exports(opts)),
        "master_port": opts.master_port or "$((15000 + SLURM_JOB_ID % 20000))",
        "srun_options": (" --cpus-per-task=$SLURM_CPUS_PER_TASK" if opts.cpus_per_task else "")
        + (f" --gpus-per-task={job.gpus_per_rank}" if job.gpus_per_rank > 1 and job.accelerator in ("gpu", "cuda")
           else ""),
        "n_configs": len(job.configs),
        "array_range": f"0-{len(job.configs) - 1}" + (f"%{opts.array_parallel}" if opts.array_parallel else ""),
        "config_list": "\n".join(f"  {shlex.quote(str(c))}" for c in job.configs),
        "extra_args": extra,
        "command": shlex.join(base) + ("" if job.template == "array" else
                                      f" --config {shlex.quote(str(job.configs[0]))}{extra}"),
    }
    if " " in values["log_dir"] or "%" in values["log_dir"]:
        raise SubmitError(f"--log_dir {values['log_dir']!r}: Slurm log paths cannot contain spaces or '%'")
    try:
        return Template(_template_file(job.template).read_text()).substitute(values)
    except (KeyError, ValueError) as e:
        raise SubmitError(f"template {job.template}: bad or unknown placeholder {e}") from e


def submit(script: str, path: Path) -> str:
    """Write ``script`` to ``path`` and ``sbatch --parsable`` it; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SubmitError(f"sbatch not found on PATH: run on a Slurm login node, or {LOCAL_CLUSTER_HINT}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    proc = subprocess.run([sbatch, "--parsable", str(path)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = "" if os.environ.get("SLURM_CONF") else f" (SLURM_CONF is not set; {LOCAL_CLUSTER_HINT})"
        raise SubmitError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}{hint}")
    return proc.stdout.strip().split(";")[0]


@dataclass
class Args:
    """``emoexp submit``: render a SLURM batch script from a stage's config and submit it."""

    stage: str = field(default="run", metadata={"positional": None, "help": f"the emoexp subcommand the job runs: "
                                                                            f"{', '.join(STAGES)}"})
    config: str | None = None
    """The stage's YAML config (its devices, num_nodes and accelerator size the job)."""
    configs: list[str] = field(default_factory=list)
    """Several configs: one array task per config."""
    template: str | None = None
    """single, multi, array or a template file (default: array for several configs, multi when num_nodes > 1)."""
    partition: str | None = None
    """#SBATCH --partition."""
    account: str | None = None
    """#SBATCH --account."""
    time: str | None = None
    """#SBATCH --time (MM, HH:MM:SS or D-HH:MM:SS)."""
    gpus_per_node: PositiveInt | None = None
    """#SBATCH --gpus-per-node (default: devices on GPU)."""
    cpus_per_task: PositiveInt | None = None
    """#SBATCH --cpus-per-task (also passed to srun)."""
    mem: str | None = None
    """#SBATCH --mem, e.g. 64G."""
    sbatch_opt: list[str] = field(default_factory=list)
    """Any other #SBATCH options, e.g. ['--exclusive']."""
    job_name: str | None = None
    """Job name (default emoexp-<stage>; never 'bash' or 'interactive')."""
    log_dir: str = "logs/slurm"
    """Logs and rendered scripts."""
    signal_seconds: PositiveInt = 120
    """SIGUSR1 this long before the time limit (the job saves, requeues, resumes)."""
    master_port: PositiveInt | None = None
    """Fixed MASTER_PORT (default: derived from the job id)."""
    array_parallel: PositiveInt | None = None
    """At most this many array tasks at once (%N)."""
    env: list[str] = field(default_factory=list)
    """NAME=VALUE exported in the job (a secret is refused: secrets reach the job through the environment)."""
    hf_offline: bool = False
    """Export HF_HUB_OFFLINE=1 in the job."""
    dry_run: bool = False
    """Print the script; write and submit nothing."""
    extra: list[str] = field(default_factory=list)
    """Flags passed to the stage (also: everything after a bare --)."""


def parse_args(argv: list[str], prog: str = "emoexp submit") -> Args:
    """Everything after a bare ``--`` goes to the stage unchanged."""
    from .config import build_parser, parse

    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args = parse(Args, argv, prog=prog, parser=build_parser(Args, prog, config_file=False))
    if args.stage not in STAGES:
        from .config import ConfigError

        raise ConfigError(f"stage: {args.stage!r} is not one of {', '.join(STAGES)}")
    args.extra = list(args.extra) + tail
    return args


def main(args: Args) -> int:
    """Render, then print (``--dry_run true``) or write next to the logs and submit; prints the job id."""
    extra = list(getattr(args, "extra", []))
    try:
        if args.job_name in ("bash", "interactive"):
            raise SubmitError(f"job name {args.job_name!r} disables Fabric's SLURM detection; pick another")
        configs = args.configs or ([args.config] if args.config else [])
        if args.configs and args.config:
            raise SubmitError("give --config or --configs, not both")
        job = plan(args.stage, configs, args.template, extra)
        script = render(job, args)
        if args.dry_run:
            print(script, end="")
            print("# dry run: nothing written or submitted (sbatch --parsable <script> would submit it)",
                  file=sys.stderr)
            return 0
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(args.log_dir).resolve() / f"emoexp-{job.stage}-{stamp}-{os.getpid()}.sbatch"
        job_id = submit(script, path)
    except SubmitError as e:
        print(f"emoexp submit: error: {e}", file=sys.stderr)
        return 2
    print(job_id)
    print(f"[emoexp] submitted {path} as job {job_id}; logs in {path.parent}", file=sys.stderr)
    return 0
