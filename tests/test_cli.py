"""The command line: instant and true help, one-line errors before any model loads, python -m emoexp."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from emoexp.cli import COMMANDS, main
from emoexp.config import RunConfig

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "official" / "EMVector" / "qwen2.5"


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def _imports_after(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(','.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.strip().splitlines()[-1].split(","))


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_never_imports_torch(command):
    """`emoexp --help` and every `emoexp X --help` answer without torch (which takes ~13 s to
    import on a busy 2-core machine); transformers, mlflow and lightning stay unloaded too."""
    argv = ["--help"] if command is None else [command, "--help"]
    code = f"from emoexp.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    mods = _imports_after(code)
    assert not {"torch", "transformers", "mlflow", "lightning", "lightning_fabric"} & {m.split(".")[0] for m in mods}


def test_run_help_shows_the_defaults_run_uses(capsys):
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    cfg = RunConfig()
    assert "<class" not in out and "typing." not in out
    for name in ("batch_size", "max_new_tokens", "experiment"):
        assert f"--{name}" in out and f"default: {getattr(cfg, name)})" in out, name
    assert f"default: {cfg.extract.limit})" in out and "--extract.limit" in out
    for f in dataclasses.fields(RunConfig):
        assert f"--{f.name}" in out


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "emoexp", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "extract" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["extract", "--out", "/proc/nope/evs.safetensors", "--model", "tiny-random-llama"], "not writable"),
    (["extract", "--accelerator", "gpu", "--devices", "8"], "CUDA device"),
    (["extract", "--site", "resid"], "--site: expected one of residual, attn, mlp, got 'resid'"),
    (["generate", "--alphas=1,.nan", "--vectors", "x"], "alphas: must be finite numbers"),
    (["extract", "--model", "Qwen/Qwen-7B-Chat"], "trust_remote_code"),
    (["generate", "--vectors", "/nonexistent.safetensors", "--model", "tiny-random-llama", "--limit", "1"],
     "no vector file"),
    (["import-official", "/nonexistent", "--out", "/tmp/x.safetensors"], "no authors' EV JSON"),
    (["run", "--limit", "abc"], "--limit: expected a positive integer, or null, got 'abc'"),
    (["run", "--max_new_tokens", "many"], "--max_new_tokens: expected a positive integer, got 'many'"),
    (["run", "--devices", "two"], "--devices: expected an integer in 1..1024, got 'two'"),
    (["run", "--generate.alphas="], "--generate.alphas: must not be empty"),
    (["run", "--generate.targets", ""], "--generate.targets: must not be empty"),
    (["run", "--generate.temperature", "-1"], "--generate.temperature: expected a number > 0"),
    (["run", "--generate.top_p", "2"], "--generate.top_p: expected a number in (0, 1]"),
    (["run", "--seed", "abc"], "--seed: expected an integer >= 0"),
    (["run", "--extract.emotions", "joy,joy"], "'joy' is listed twice"),
    (["run", "--trust_remote_code", '"false"'], "--trust_remote_code: expected true or false"),
    (["run", "--extrct.limit", "3"], "unknown option --extrct.limit (did you mean --extract.limit?)"),
    (["runn"], "unknown command 'runn' (did you mean 'run'?)"),
    (["generate", "--engine", "vllm", "--conditions", "unsteered", "--model", "tiny-random-llama", "--limit", "1"],
     "engine: vllm is not installed" if importlib.util.find_spec("vllm") is None else "is built in memory"),
    (["generate", "--tensor_parallel_size", "2", "--vectors", "x"], "need engine=vllm"),
    (["run", "--generate.engine", "vllm", "--generate.compile", "default"], "vLLM compiles its own graph"),
])
def test_bad_input_is_one_line_before_any_model_loads(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_alphas_in_any_notation(capsys):
    from emoexp.config import parse

    assert parse(RunConfig, ["--generate.alphas=1e-3,-2,.5"]).generate.alphas == [0.001, -2.0, 0.5]


def test_slurm_task_counts_must_match(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert main(["extract", "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "--ntasks-per-node must equal --devices" in capsys.readouterr().err


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="the authors' vectors are not beside this checkout")
def test_import_official_command(tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    assert main(["import-official", str(OFFICIAL), "--out", str(out), "--model_id", "Qwen/Qwen2.5-7B-Instruct"]) == 0
    from emoexp import EmotionVectors

    evs = EmotionVectors.load(out)
    assert evs.metadata["site"] == "attn" and evs.num_layers == 28
    assert "attention-output" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["emoexp", "emoexp.eval", "emoexp.tracking"])
def test_lazy_names_are_not_shadowed_by_submodules(package):
    """A lazily served name that is also a submodule would turn into the module once anything
    imports that submodule (``from emoexp import capture`` giving a module)."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    subs = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not set(pkg._LAZY) & subs
    for name, module in pkg._LAZY.items():
        importlib.import_module(f"{package}.{module}")
        assert not inspect.ismodule(getattr(pkg, name)), name
