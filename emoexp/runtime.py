"""The one module (besides the recipes) that knows Lightning Fabric.

Fabric comes from the standalone ``lightning-fabric`` distribution (the ``lightning`` package's
Fabric, without the Trainer and torchmetrics that the full package imports at start-up: about
4.5 s less per process on 2 CPU cores, which every rank of every run pays).

Checks resources before any model loads, builds the Fabric, deals batches to ranks,
all-reduces exactly (float64 ``sum``), handles preemption signals, and tears down cleanly.

Example:
    >>> check_resources(cfg, outputs=[cfg.out])          # doctest: +SKIP
    >>> fabric = make_fabric(cfg); fabric.launch(worker, cfg)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Preemption",
    "ResourceError",
    "all_reduce_sum",
    "check_resources",
    "disk_full",
    "finish",
    "is_rank_zero",
    "load_on_device",
    "make_fabric",
    "model_dtype",
    "my_batches",
    "precision",
    "set_threads",
]


class ResourceError(RuntimeError):
    """Asked-for devices, nodes or outputs that this machine or job cannot provide."""


def disk_full(e: BaseException, folder: str | Path) -> BaseException:
    """A full disk (or quota) while writing under ``folder`` as a one-line :class:`ResourceError`;
    any other error unchanged."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"no space left on the device of {folder} (while writing "
                             f"{e.filename or 'there'}): free space and rerun the same command; finished work "
                             "is kept and resumes")
    return e


def _accelerator(cfg: Any) -> str:
    acc = cfg.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if acc == "cuda" else acc


def check_resources(cfg: Any, outputs: Sequence[str | Path] = ()) -> None:
    """Refuse, before any model is loaded, what cannot work.

    Raises:
        ResourceError: more GPUs than exist, SLURM task counts that disagree with
            ``devices``/``num_nodes``, or an output path that is not writable.
    """
    acc = _accelerator(cfg)
    if acc == "gpu":
        have = torch.cuda.device_count()
        if have == 0:
            raise ResourceError("accelerator=gpu but no CUDA device is visible (use --accelerator cpu)")
        if cfg.devices > have:
            raise ResourceError(f"devices={cfg.devices} but this node has {have} GPU(s)")
    elif cfg.devices > 2 * (os.cpu_count() or 1) + 2:
        raise ResourceError(f"devices={cfg.devices} CPU processes on a machine with {os.cpu_count()} cores")
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_STEP_ID") is not None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        nodes = os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES")
        if per_node and per_node.isdigit() and int(per_node) != cfg.devices:
            raise ResourceError(f"SLURM runs {per_node} task(s) per node but devices={cfg.devices}: "
                                "--ntasks-per-node must equal --devices")
        if nodes and nodes.isdigit() and int(nodes) != cfg.num_nodes:
            raise ResourceError(f"SLURM gave {nodes} node(s) but num_nodes={cfg.num_nodes}")
    for out in outputs:
        _check_writable(Path(out))


def _check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".emoexp-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ResourceError(f"output {path} is not writable: {e.strerror or e}") from e


def make_fabric(cfg: Any) -> Any:
    """A Fabric for ``cfg`` (accelerator, devices, num_nodes, precision)."""
    import warnings

    from lightning_fabric import Fabric

    if not os.environ.get("SLURM_STEP_ID"):  # a plain run on a machine that has srun installed
        warnings.filterwarnings("ignore", message=r".*`srun` command is available")
    acc = _accelerator(cfg)
    world = cfg.devices * cfg.num_nodes
    strategy: Any = "auto"
    if world > 1:
        from datetime import timedelta

        from lightning_fabric.strategies import DDPStrategy

        # Other ranks wait at the final barrier while rank 0 scores and logs: allow hours.
        strategy = DDPStrategy(process_group_backend="gloo" if acc == "cpu" else "nccl",
                               timeout=timedelta(hours=6))
    return Fabric(accelerator=acc, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy,
                  precision=precision(cfg))


def precision(cfg: Any) -> str:
    """Fabric precision for ``cfg``: its own, or 32-true on CPU and bf16-true on GPU."""
    return cfg.precision or ("32-true" if _accelerator(cfg) == "cpu" else "bf16-true")


def model_dtype(cfg: Any) -> torch.dtype:
    """The weight dtype for ``cfg`` (inference: weights are cast once, no DDP wrapper)."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    p = precision(cfg)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    return torch.float32


def is_rank_zero() -> bool:
    """Whether this process will be global rank 0, read from the environment before Fabric
    launches (the launching process, or task 0 of a SLURM step). Locks, MLflow runs and
    summaries belong to rank 0 only."""
    if os.environ.get("SLURM_STEP_ID") is not None and os.environ.get("SLURM_PROCID") is not None:
        return os.environ["SLURM_PROCID"] == "0"
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if os.environ.get(var, "0").strip() not in ("", "0"):
            return False
    return True


def set_threads(cfg: Any) -> None:
    """Intra-op CPU threads of this process: ``cfg.threads``, else what Lightning chose (cores /
    local processes). Bit-identical results across world sizes need equal thread counts: CPU
    kernels split (and round) their work by thread."""
    if getattr(cfg, "threads", None):
        torch.set_num_threads(int(cfg.threads))


def load_on_device(fabric: Any, cfg: Any) -> tuple[Any, Any]:
    """This rank's ``(model, tokenizer)``: threads set, weights loaded and cast for inference on
    ``fabric.device`` (no DDP wrapper: the model is frozen)."""
    from .models import load_model

    set_threads(cfg)
    model, tok = load_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    model.to(device=fabric.device, dtype=model_dtype(cfg))
    return model, tok


def my_batches(n_batches: int, rank: int, world: int) -> list[int]:
    """The global batch ids this rank runs: dealt round-robin, each exactly once."""
    return list(range(rank, n_batches, world))


def all_reduce_sum(fabric: Any, flat: torch.Tensor) -> torch.Tensor:
    """Exact sum over ranks of a float64 tensor (one collective)."""
    if fabric.world_size == 1:
        return flat
    t = flat.to(fabric.device, torch.float64)
    out = fabric.all_reduce(t, reduce_op="sum")
    return out.cpu()


def finish(fabric: Any) -> None:
    """Barrier, then destroy the process group (without it, runs crashed at exit)."""
    if fabric.world_size > 1:
        fabric.barrier()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Preemption:
    """Turns SIGTERM / SIGUSR1 (SLURM's warning before the time limit) into a flag checked
    between batches; :meth:`stop_if_asked` saves nothing itself (state is saved per batch),
    requeues the SLURM job when there is one, and exits with code 99."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def stop_if_asked(self, rank: int) -> None:
        if self.signal is None:
            return
        print(f"[emoexp] rank {rank}: got signal {self.signal}; state saved, stopping", file=sys.stderr)
        job = os.environ.get("SLURM_JOB_ID")
        if job and rank == 0 and self.signal == signal.SIGUSR1:
            subprocess.run(["scontrol", "requeue", job], check=False)
        raise SystemExit(99)
