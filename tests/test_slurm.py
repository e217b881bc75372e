"""``emoexp submit``: rendered sbatch scripts (pure), and one real job on the local Slurm cluster
started by ``scripts/slurm-cluster.sh start`` (marked ``slurm``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from emoexp import slurm
from emoexp.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / ".cache" / "slurm" / "env"


def write_config(path: Path, **fields: object) -> Path:
    base = {"model": "tiny-random-llama", "accelerator": "cpu", "devices": 2, "num_nodes": 1}
    path.write_text(yaml.safe_dump({**base, **fields}))
    return path


def parse(argv: list[str]) -> slurm.Args:
    return slurm.parse_args(argv)


def render(argv: list[str]) -> str:
    """Dry-run render through ``emoexp.slurm`` without touching sbatch."""
    args = parse(argv)
    configs = args.configs or [args.config]
    return slurm.render(slurm.plan(args.stage, configs, args.template, args.extra), args)


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for k in slurm.PASSTHROUGH_ENV:
        monkeypatch.delenv(k, raising=False)


# ----------------------------------------------------------------------------- rendering (pure)

def test_single_node_cpu(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "x.yaml", devices=2)
    script = render(["extract", "--config", str(cfg), "--time", "00:30:00"])
    d = directives(script)
    assert "--ntasks-per-node=2" in d and "--nodes=1" in d
    assert "--requeue" in d and "--signal=USR1@120" in d and "--time=00:30:00" in d
    assert "--job-name=emoexp-extract" in d
    assert f"--output={tmp_path}/logs/slurm/%x-%j.out" in d
    assert not any(x.startswith("--gpus") for x in d)  # CPU config: no GPU request
    assert "srun --kill-on-bad-exit=1 --nodes=1 --ntasks-per-node=2" in script
    assert f"{sys.executable} -m emoexp extract --config {cfg}" in script
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in script
    assert "MASTER_PORT=$((15000 + SLURM_JOB_ID % 20000))" in script
    # directives must precede the first command, or sbatch ignores them
    lines = script.splitlines()
    first_cmd = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_cmd
    assert subprocess.run(["bash", "-n"], check=False, input=script, text=True).returncode == 0


def test_multi_node_gpu_options(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "x.yaml", accelerator="gpu", devices=8, num_nodes=4)
    script = render(["generate", "--config", str(cfg), "--partition", "gpu", "--account", "lab",
                     "--time", "1-00:00:00", "--cpus_per_task", "6", "--sbatch_opt=[--exclusive]"])
    d = directives(script)
    assert "--nodes=4" in d and "--ntasks-per-node=8" in d and "--gpus-per-node=8" in d
    assert {"--partition=gpu", "--account=lab", "--time=1-00:00:00", "--cpus-per-task=6", "--exclusive"} <= set(d)
    assert "--job-name=emoexp-generate" in d
    assert "srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=8 --cpus-per-task=$SLURM_CPUS_PER_TASK" in script
    assert subprocess.run(["bash", "-n"], check=False, input=script, text=True).returncode == 0


def test_vllm_rank_gets_its_tensor_parallel_gpus(tmp_path: Path) -> None:
    """One rank per node, vLLM's TP over the node's 8 GPUs: Slurm gives the node 8 GPUs and the task all 8."""
    cfg = write_config(tmp_path / "x.yaml", accelerator="gpu", devices=1, num_nodes=4, engine="vllm",
                       tensor_parallel_size=8)
    script = render(["generate", "--config", str(cfg)])
    d = directives(script)
    assert "--nodes=4" in d and "--ntasks-per-node=1" in d and "--gpus-per-node=8" in d
    assert "--ntasks-per-node=1 --gpus-per-task=8" in script
    two = write_config(tmp_path / "two.yaml", accelerator="gpu", devices=2, engine="vllm", tensor_parallel_size=2,
                       pipeline_parallel_size=2)
    assert "--gpus-per-node=8" in directives(render(["generate", "--config", str(two)]))
    with pytest.raises(slurm.SubmitError, match=r"needs 4 GPUs \(vLLM's TP x PP\)"):
        render(["generate", "--config", str(two), "--gpus_per_node", "4"])
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": "tiny-random-llama", "accelerator": "gpu", "devices": 1,
                                   "generate": {"engine": "vllm", "tensor_parallel_size": 4}}))
    assert "--gpus-per-node=4" in directives(render(["run", "--config", str(run)]))
    cpu = write_config(tmp_path / "cpu.yaml", engine="vllm", tensor_parallel_size=2)
    assert not any(x.startswith("--gpus") for x in directives(render(["generate", "--config", str(cpu)])))


def test_default_template_follows_num_nodes(tmp_path: Path) -> None:
    one = write_config(tmp_path / "one.yaml", devices=1)
    many = write_config(tmp_path / "many.yaml", num_nodes=3)
    assert slurm.plan("extract", [str(one)]).template == "single"
    assert slurm.plan("extract", [str(many)]).template == "multi"
    with pytest.raises(slurm.SubmitError, match="--template multi"):
        slurm.plan("extract", [str(many)], "single")


def test_array_over_configs(tmp_path: Path) -> None:
    cfgs = [write_config(tmp_path / f"c{i}.yaml", seed=i) for i in range(3)]
    script = render(["run", "--configs", *map(str, cfgs), "--array_parallel", "2", "--", "--batch_size", "4"])
    d = directives(script)
    assert "--array=0-2%2" in d and "--ntasks-per-node=2" in d and "--nodes=1" in d and "--requeue" in d
    assert f"--output={tmp_path}/logs/slurm/%x-%A_%a.out" in d
    for c in cfgs:
        assert f"  {c}\n" in script
    assert 'CONFIG=${CONFIGS[$SLURM_ARRAY_TASK_ID]}' in script
    assert f'{sys.executable} -m emoexp run --config "$CONFIG" --batch_size 4' in script
    # bash picks the right config per array task
    configs_block = script[script.index("CONFIGS=("):script.index("\n", script.index("CONFIG=$"))]
    out = subprocess.run(["bash", "-c", f'SLURM_ARRAY_TASK_ID=1\n{configs_block}\necho "$CONFIG"'],
                         check=False, capture_output=True, text=True)
    assert out.stdout.strip() == str(cfgs[1])


def test_sweep_reads_resources_only(tmp_path: Path) -> None:
    """``sweep`` configs carry grid keys the resource check ignores; resources still count."""
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({"devices": 4, "accelerator": "gpu", "grid": ["generate.alphas=[[1], [2]]"]}))
    job = slurm.plan("sweep", [str(cfg)])
    assert (job.devices, job.num_nodes, job.accelerator, job.template) == (4, 1, "gpu", "single")


def test_array_needs_same_resources(tmp_path: Path) -> None:
    a = write_config(tmp_path / "a.yaml", devices=2)
    b = write_config(tmp_path / "b.yaml", devices=1)
    with pytest.raises(slurm.SubmitError, match="same devices/num_nodes"):
        slurm.plan("extract", [str(a), str(b)])


def test_extra_flags_reach_stage_and_resources(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "x.yaml", devices=2)
    script = render(["extract", "--config", str(cfg), "--", "--devices", "1", "--max_new_tokens", "4"])
    assert "--ntasks-per-node=1" in directives(script)
    assert f"--config {cfg} --devices 1 --max_new_tokens 4" in script
    with pytest.raises(slurm.SubmitError, match="unknown option --no_such_flag"):
        render(["extract", "--config", str(cfg), "--", "--no_such_flag", "1"])
    run_cfg = write_config(tmp_path / "r.yaml", extract={"limit": 2})
    with pytest.raises(slurm.SubmitError, match="is an `emoexp run` config"):
        render(["extract", "--config", str(run_cfg)])


def test_env_passthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path / "x.yaml")
    monkeypatch.setenv("EMOEXP_CACHE", "/data/my cache")
    script = render(["extract", "--config", str(cfg), "--hf_offline", "true", "--env", "[FOO=bar]"])
    assert "export HF_HUB_OFFLINE=1" in script and "export FOO=bar" in script
    assert "export EMOEXP_CACHE='/data/my cache'" in script


def test_secrets_are_never_written_into_job_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A tracking URI with a password reaches the job through the inherited environment
    (--export=ALL), never as text in the script, in --dry_run output or in an error."""
    cfg = write_config(tmp_path / "x.yaml")
    secret = "s3cr3t-Pa55word"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{secret}@mlflow.example:5000")
    script = render(["run", "--config", str(cfg)])
    assert secret not in script and "MLFLOW_TRACKING_URI" not in script.split("# Secrets")[0]
    assert "#SBATCH --export=ALL" in script
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert "export MLFLOW_TRACKING_URI=http://mlflow.example:5000" in render(["run", "--config", str(cfg)])
    assert cli_main(["submit", "run", "--config", str(cfg), "--dry_run", "true", "--env", f"[API_KEY={secret}]"]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err and "never written into job scripts" in captured.err


@pytest.mark.parametrize("fields,argv,message", [
    ({"devices": 0}, [], "--devices: expected an integer in 1..1024, got 0"),
    ({"num_nodes": 0}, [], "--num_nodes: expected an integer in 1..65536, got 0"),
    ({}, ["--template", "huge"], "unknown template"),
    ({}, ["--time", "soon"], "--time"),
    ({"accelerator": "gpu", "devices": 4}, ["--gpus_per_node", "2"], "each process needs its own GPU"),
    ({}, ["--job_name", "bash"], "SLURM detection"),
    ({}, ["--array_parallel", "0"], "--array_parallel: expected a positive integer"),
])
def test_validation_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict, argv: list[str],
                           message: str) -> None:
    cfg = write_config(tmp_path / "x.yaml", **fields)
    assert cli_main(["submit", "extract", "--config", str(cfg), "--dry_run", "true", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["submit", "extract", "--config", str(tmp_path / "nope.yaml"), "--dry_run", "true"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli_main(["submit", "extract", "--dry_run", "true"]) == 2
    assert "no config given" in capsys.readouterr().err


def test_dry_run_prints_and_submits_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path / "x.yaml")

    def no_subprocess(*a: object, **k: object) -> None:
        raise AssertionError(f"dry run ran a command: {a}")

    monkeypatch.setattr(slurm.subprocess, "run", no_subprocess)
    before = sorted(tmp_path.rglob("*"))
    assert cli_main(["submit", "extract", "--config", str(cfg), "--dry_run", "true", "--", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "--ntasks-per-node=2" in out and "--limit 3" in out
    assert sorted(tmp_path.rglob("*")) == before  # no script, no log folder


def test_no_sbatch_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path / "x.yaml")
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    assert cli_main(["submit", "extract", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "sbatch not found" in err and "scripts/slurm-cluster.sh" in err


def test_submit_writes_script_and_prints_job_id(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake sbatch on PATH: the script lands in the log folder and the job id is printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch-args\necho "4242;cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = write_config(tmp_path / "x.yaml")
    assert cli_main(["submit", "extract", "--config", str(cfg), "--log_dir", "out/logs"]) == 0
    assert capsys.readouterr().out.strip() == "4242"
    scripts = list((tmp_path / "out" / "logs").glob("emoexp-extract-*.sbatch"))
    assert len(scripts) == 1 and "--ntasks-per-node=2" in scripts[0].read_text()
    assert (tmp_path / "sbatch-args").read_text().split() == ["--parsable", str(scripts[0])]


# ----------------------------------------------------------------------------- a real Slurm job

def cluster_env() -> dict[str, str]:
    """Environment for Slurm clients, from .cache/slurm/env (or SLURM_CONF); fails in CI, skips
    locally when the local cluster is not up."""
    env = dict(os.environ)
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key.strip()] = value.strip()
    problem = None
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        problem = "Slurm client commands not installed"
    elif "SLURM_CONF" not in env and not Path("/etc/slurm/slurm.conf").is_file():
        problem = f"no {ENV_FILE} and no SLURM_CONF"
    else:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, env=env, capture_output=True, text=True,
                             timeout=30)
        states = set(out.stdout.split())
        if out.returncode != 0 or not states & {"idle", "mixed", "allocated"}:
            problem = f"sinfo: rc={out.returncode} states={sorted(states)} {out.stderr.strip()}"
    if problem:
        msg = f"local Slurm cluster not available ({problem}); start it: bash scripts/slurm-cluster.sh start"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return env


def wait_for_job(job_id: str, env: dict[str, str], log_dir: Path, timeout: float = 240.0) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        q = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, check=False, capture_output=True,
                           text=True)
        if q.returncode == 0 and not q.stdout.strip():
            break
        time.sleep(0.5)
    else:
        subprocess.run(["scancel", job_id], check=False, env=env)
        pytest.fail(f"job {job_id} still queued/running after {timeout}s\n{read_logs(log_dir)}")
    cmd = ["scontrol", "show", "job", job_id]
    return subprocess.run(cmd, env=env, check=False, capture_output=True, text=True).stdout


def read_logs(log_dir: Path) -> str:
    return "\n".join(f"----- {p}\n{p.read_text(errors='replace')[-6000:]}" for p in sorted(log_dir.glob("*.out")))


@pytest.mark.slurm
@pytest.mark.slow
def test_real_job_matches_single_process(tmp_path: Path) -> None:
    """2 Slurm tasks (2 Fabric ranks, gloo) give the same vectors as one process."""
    from emoexp import EmotionVectors

    env = cluster_env()
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cfg = write_config(tmp_path / "extract.yaml", devices=2, limit=2, batch_size=2, max_new_tokens=4, threads=1,
                       out=str(tmp_path / "slurm.safetensors"))
    log_dir = tmp_path / "logs"
    t0 = time.time()
    sub = subprocess.run([sys.executable, "-m", "emoexp", "submit", "extract", "--config", str(cfg),
                          "--template", "single", "--time", "00:10:00", "--log_dir", str(log_dir)],
                         env=env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert job_id.isdigit(), sub.stdout
    show = wait_for_job(job_id, env, log_dir)
    logs = read_logs(log_dir)
    assert "JobState=COMPLETED" in show and "ExitCode=0:0" in show, f"{show}\n{logs}"
    assert "Starting with 2 processes" in logs, logs  # Fabric saw both Slurm tasks
    print(f"slurm job {job_id}: {time.time() - t0:.1f}s")

    # the same extraction in one process, outside Slurm
    local_env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    one = subprocess.run([sys.executable, "-m", "emoexp", "extract", "--config", str(cfg), "--devices", "1",
                          "--accelerator", "cpu", "--threads", "1", "--out", str(tmp_path / "other.safetensors")],
                         env=local_env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]

    a = EmotionVectors.load(tmp_path / "slurm.safetensors")
    b = EmotionVectors.load(tmp_path / "other.safetensors")
    assert a.emotions == b.emotions and len(a.emotions) == 5
    assert a.metadata.get("world_size") == 2 and b.metadata.get("world_size") == 1
    for e in a.emotions:  # the same thread count per process: bit-identical
        assert torch.equal(a[e], b[e]), e


@pytest.mark.slow
def test_wheel_carries_templates_data_and_metrics(tmp_path: Path) -> None:
    """An installed wheel (no source tree beside it) finds its Slurm templates, bundled
    queries and evaluate modules."""
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("emoexp-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from emoexp import slurm; from emoexp.datasets import load_queries; "
            "d = slurm.template_dir(); print(d); print(sorted(p.name for p in d.glob('*.sbatch'))); "
            "print(len(load_queries('emotionquery')))")
    env = {k: v for k, v in os.environ.items() if k != "EMOEXP_SLURM_TEMPLATES"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    where, names, n = out.stdout.splitlines()[-3:]
    assert where.startswith(str(site)) and names == str(sorted(slurm.TEMPLATES.values())) and int(n) == 500
    assert any(n.startswith("emoexp/metrics/") for n in zipfile.ZipFile(wheel).namelist())
