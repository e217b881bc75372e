"""Every shell command shown in README.md and docs/ works as written.

Commands are read from the fenced ``bash``/``sh``/``console`` blocks (continuation lines joined,
``$ `` prompts stripped) and run in a sandbox that has the repository's configs/, scripts/ and
slurm/ beside the paper authors' data, after one tiny ``emoexp run`` has made the outputs the
docs point to (``outputs/run/latest/``) and logged it to the sandbox's MLflow store:

- ``emoexp run/extract/generate/sweep ...``: resolved with ``--print_config`` (every flag, key,
  value and config file checked); the pipelines themselves run in test_live.py, test_pipeline.py
  and test_distributed.py;
- ``emoexp submit ...``: rendered with ``--dry_run true``;
- ``emoexp compare/evaluate/chat/import-official ...``: run for real (``--model`` of chat set to
  the sandbox's tiny model, whose vectors the sandbox holds);
- ``bash scripts/X.sh``: the script exists and parses (``bash -n``): CI runs install/test itself;
- a command whose comment says ``needs: <what>`` (a GPU cluster, a server, the hub) is only
  resolved (``--print_config`` / ``--dry_run true``), never skipped silently.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "emoexp" / "data" / "README.md"]
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
EMOEXP = ("emoexp", ".venv/bin/emoexp", ".venv-vllm/bin/emoexp")
PARSE_ONLY = {"run", "extract", "generate", "sweep"}


def commands(path: Path) -> list[tuple[int, str, str]]:
    """(line number, command, its trailing comment) of every shell command in ``path``."""
    out: list[tuple[int, str, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i, kind = 0, None
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line.strip())
        if kind is None and m:
            kind = m.group(1)
        elif kind is not None and line.strip().startswith("```"):
            kind = None
        elif kind is not None:
            start = i
            text = line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            text = text.strip()
            if kind == "console":
                text = text[2:] if text.startswith("$ ") else ""
            elif text.startswith("$ "):
                text = text[2:]
            if text and not text.startswith("#"):
                try:
                    words = shlex.split(text, comments=True)
                except ValueError:
                    words = text.split()
                comment = text.split(" # ", 1)[1] if " # " in text else ""
                if words:
                    out.append((start + 1, shlex.join(words), comment))
        i += 1
    return out


ALL = [(p, n, c, note) for p in DOCS for n, c, note in commands(p)]


def test_the_docs_show_commands():
    assert len(ALL) >= 25
    assert {p.name for p, *_ in ALL} >= {"README.md", "slurm.md", "mlflow.md", "evaluation.md"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("docs")
    proj = base / "proj"
    proj.mkdir()
    for name in ("configs", "scripts", "slurm", "benchmarks"):
        (proj / name).symlink_to(ROOT / name)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (base / "shared").symlink_to(shared)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for venv in (".venv", ".venv-vllm"):  # .venv-vllm's commands are resolved (parsed) with this venv's emoexp
        (proj / venv / "bin").mkdir(parents=True)
        for tool in ("emoexp", "python", "mlflow"):
            (proj / venv / "bin" / tool).symlink_to(Path(sys.executable).parent / tool)
    first = subprocess.run(["emoexp", "run", "--model", "tiny-random-llama", "--accelerator", "cpu", "--limit", "2",
                            "--max_new_tokens", "4", "--evaluate.metrics", "[eps, repetition]"],
                           cwd=proj, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    return {"proj": proj, "env": env, "shared": shared.is_dir()}


def _run(words: list[str], sandbox: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(words, cwd=sandbox["proj"], env=sandbox["env"], capture_output=True, text=True,
                          timeout=900, input=stdin, check=False)


@pytest.mark.parametrize("path, line, command, note", ALL,
                         ids=[f"{p.name}:{n}" for p, n, _, _ in ALL])
def test_command_works_as_written(path, line, command, note, sandbox):
    parts = [shlex.join(x) for x in _split_and(shlex.split(command))]
    for part in parts:
        _check_one(path, line, part, note, sandbox)


def _split_and(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            out.append([])
        else:
            out[-1].append(w)
    return [x for x in out if x]


def _check_one(path: Path, line: int, command: str, note: str, sandbox: dict) -> None:
    words = shlex.split(command)
    env_prefix = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env_prefix[k] = v
    where = f"{path.relative_to(ROOT)}:{line}: {command}"
    needs = "needs:" in note
    if words[:3] in (["python", "-m", "emoexp"], [".venv/bin/python", "-m", "emoexp"]):
        words = ["emoexp", *words[3:]]
    head = words[0]
    if head in EMOEXP:
        sub = words[1] if len(words) > 1 else "--help"
        if "../shared" in command and not sandbox["shared"]:
            pytest.skip("the paper authors' data is not beside this checkout")
        if sub in PARSE_ONLY or (needs and sub != "submit"):
            words = [*words, "--print_config"]
        elif sub == "submit" and "--dry_run" not in words:
            cut = words.index("--") if "--" in words else len(words)  # after a bare -- flags go to the stage
            words = [*words[:cut], "--dry_run", "true", *words[cut:]]
        if sub == "chat":
            words = [*words, "--model", "tiny-random-llama"]
        if env_prefix and not needs:
            pytest.fail(f"{where}: sets {', '.join(env_prefix)}: mark it `# needs: ...` or drop the variable")
        passed = sandbox.setdefault("passed", set())  # a command line shown twice (validate-scorer) runs once
        if shlex.join(words) in passed and sub != "chat":
            return
        proc = _run(words, sandbox, stdin="/show\n/set joy=1\nhello\n/quit\n" if sub == "chat" else None)
        assert proc.returncode == 0, f"{where}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        passed.add(shlex.join(words))
        return
    if head == "bash" and len(words) > 1 and words[1].startswith("scripts/"):
        script = ROOT / words[1]
        assert script.is_file(), where
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, where
        return
    if head in (".venv/bin/mlflow", "mlflow") or head in ("pip", "sbatch", "squeue", "scontrol", "export", "cd", "curl"):
        assert needs or head in ("pip", "export", "cd"), f"{where}: mark it `# needs: ...`"
        return
    if head == "vllm" or words[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]:  # vLLM's own server
        assert needs, f"{where}: mark it `# needs: ...`"
        return
    if head in (".venv/bin/python", "python", ".venv-vllm/bin/python") and len(words) > 1 and words[1].endswith(".py"):
        assert (ROOT / words[1]).is_file(), where
        proc = _run([sys.executable, str(ROOT / words[1]), "--help"], sandbox)
        assert proc.returncode == 0, f"{where}\n{proc.stderr[-2000:]}"
        return
    pytest.fail(f"{where}: no rule runs this kind of command; add one to tests/test_docs.py or mark it")
