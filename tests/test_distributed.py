"""Real multi-process Fabric runs (gloo, CPU): exactness across world sizes, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emoexp import EmotionVectors

pytestmark = pytest.mark.slow

# One intra-op thread per process at every world size: CPU kernels split (and round) work by thread count.
COMMON = ["--model", "tiny-random-llama", "--accelerator", "cpu", "--batch_size", "2", "--max_new_tokens", "4",
          "--threads", "1"]


def _emoexp(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "emoexp", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kw, check=False)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("dist")
    out = {}
    for world in (1, 2, 3):
        path = d / f"evs-{world}.safetensors"
        _ok(_emoexp(["extract", *COMMON, "--data", "emotionquery", "--limit", "3", "--emotions", "joy,anger",
                     "--devices", str(world), "--out", str(path)]))
        out[world] = path
    return out


def test_extraction_same_vectors_for_1_2_3_processes(extracted):
    ref = EmotionVectors.load(extracted[1])
    assert ref.metadata["n_queries"]["joy"]["neutral"] == 3
    for world in (2, 3):
        other = EmotionVectors.load(extracted[world])
        assert other.metadata["world_size"] == world
        for e in ref.emotions:  # exact: float64 sums, one all-reduce, equal thread counts
            assert torch.equal(other[e], ref[e]), (world, e)
    rows = [json.loads(line) for line in extracted[1].with_suffix(".responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2 and len({(r["id"], r["condition"]) for r in rows}) == 12


def test_pca_extraction_same_vectors_for_1_and_2_processes(extracted, tmp_path):
    """Per-query sums (method=pca) go through the same single all-reduce: exact across world sizes,
    and the responses (hence the mean EV of the same run) do not depend on the method."""
    for world in (1, 2):
        _ok(_emoexp(["extract", *COMMON, "--data", "emotionquery", "--limit", "3", "--emotions", "joy,anger",
                     "--devices", str(world), "--method", "pca", "--out", str(tmp_path / f"pca-{world}.safetensors")]))
    one, two = (EmotionVectors.load(tmp_path / f"pca-{w}.safetensors") for w in (1, 2))
    mean = EmotionVectors.load(extracted[1])
    assert one.metadata["method"] == "pca" and mean.metadata["method"] == "mean"
    assert one.metadata["identity"] != mean.metadata["identity"]
    for e in one.emotions:
        assert torch.equal(one[e], two[e]), e
        assert not torch.equal(one[e], mean[e])
    assert (tmp_path / "pca-1.responses.jsonl").read_text() == extracted[1].with_suffix(".responses.jsonl").read_text()


def test_generation_rows_identical_for_1_2_3_processes(extracted, tmp_path):
    outs = {}
    for world in (1, 2, 3):
        out = tmp_path / f"gen-{world}.jsonl"
        _ok(_emoexp(["generate", *COMMON, "--data", "emotionquery_plus", "--limit", "1", "--targets", "joy,anger",
                     "--alphas=-1,0,2", "--vectors", str(extracted[1]), "--devices", str(world), "--out", str(out)]))
        outs[world] = out.read_text().splitlines()
    rows = [json.loads(x) for x in outs[1]]
    n_queries = len({r["id"] for r in rows})
    # unsteered + prompt x 2 targets + steered x 2 targets x 3 alphas, each over every query, no gaps
    assert len(rows) == (1 + 2 + 6) * n_queries
    assert outs[2] == outs[1] and outs[3] == outs[1]
    zero = [r for r in rows if r["condition"] == "steered" and r["alpha"] == 0.0]
    unsteered = {r["id"]: r["response"] for r in rows if r["condition"] == "unsteered"}
    assert zero and all(r["response"] == unsteered[r["id"]] for r in zero)


def test_compiled_generation_equals_eager_hooks(extracted, tmp_path):
    """The fast path (static cache, compiled decoding, biases rewritten in place per batch)
    writes the same responses as eager hook steering, for every target and alpha."""
    args = ["generate", *COMMON, "--data", "emotionquery_plus", "--limit", "1", "--targets", "joy,anger=1+joy=-1",
            "--alphas=-2,0,3", "--vectors", str(extracted[1])]
    eager, fast = tmp_path / "eager.jsonl", tmp_path / "fast.jsonl"
    _ok(_emoexp([*args, "--out", str(eager)]))
    _ok(_emoexp([*args, "--compile", "default", "--compile_backend", "eager", "--out", str(fast)]))
    a = [json.loads(x) for x in eager.read_text().splitlines()]
    b = [json.loads(x) for x in fast.read_text().splitlines()]
    assert [(r["condition"], r["target"], r["alpha"], r["response"]) for r in a] == \
        [(r["condition"], r["target"], r["alpha"], r["response"]) for r in b]
    unsteered = {r["id"]: r["response"] for r in b if r["condition"] == "unsteered"}
    moved = [r for r in b if r["condition"] == "steered" and r["alpha"] and r["response"] != unsteered[r["id"]]]
    assert moved  # steering acts on the compiled path, it is not silently dropped
    bad = _emoexp([*args, "--compile", "default", "--positions", "generated", "--out", str(tmp_path / "x.jsonl")])
    assert bad.returncode == 2 and "positions=all" in bad.stderr
    missing = _emoexp(["generate", *COMMON, "--targets", "fear", "--vectors", str(extracted[1]),
                       "--out", str(tmp_path / "y.jsonl")])
    assert missing.returncode == 2 and "unknown emotion 'fear'" in missing.stderr and "Loading" not in missing.stderr


def test_centred_generation_equals_the_target_minus_the_mean(extracted, tmp_path):
    """--centre true steers 'anger' with anger - mean(EVs): the same responses as the mix target
    anger=1+base=-1 without centring, and not those of plain anger."""
    args = ["generate", *COMMON, "--data", "emotionquery_plus", "--limit", "1", "--alphas=0,4,8",
            "--vectors", str(extracted[1]), "--conditions", "[unsteered, steered]"]
    centred, mixed = tmp_path / "centred.jsonl", tmp_path / "mixed.jsonl"
    _ok(_emoexp([*args, "--targets", "anger", "--centre", "true", "--out", str(centred)]))
    _ok(_emoexp([*args, "--targets", "anger=1+base=-1,anger", "--out", str(mixed)]))
    a = [json.loads(x) for x in centred.read_text().splitlines()]
    b = [json.loads(x) for x in mixed.read_text().splitlines()]

    def steered(rows, target):
        return [(r["id"], r["alpha"], r["response"]) for r in rows if r["condition"] == "steered" and r["target"] == target]

    assert steered(a, "anger") == steered(b, "anger=1+base=-1")
    assert steered(a, "anger") != steered(b, "anger")  # centring changed what was steered
    bad = _emoexp([*args, "--targets", "base", "--centre", "true", "--out", str(tmp_path / "x.jsonl")])
    assert bad.returncode == 2 and "centre" in bad.stderr
    full = EmotionVectors.load(extracted[1])
    one = EmotionVectors({"joy": full["joy"]}, full.metadata).save(tmp_path / "joy.safetensors")
    lone = _emoexp([str(one) if a == str(extracted[1]) else a for a in args]
                   + ["--targets", "joy", "--centre", "true", "--out", str(tmp_path / "y.jsonl")])
    assert lone.returncode == 2 and "at least 2 emotions" in lone.stderr and "Loading" not in lone.stderr


def _kill_9_when(args: list[str], out: Path, ready) -> Path:
    """Start ``emoexp *args --out out``, SIGKILL its process group once ``ready(work dir)`` holds
    (or after 300 s), and return the work dir; the run must not have finished."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "emoexp", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = out.with_name(out.name + ".work")
    deadline = time.time() + 300
    while time.time() < deadline and not ready(work):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ready(work), "the run wrote nothing to resume from before the deadline"
    assert not out.exists(), "the run finished before it could be killed"
    return work


def test_kill_9_and_resume_equals_clean_run(extracted, tmp_path):
    args = ["extract", *COMMON, "--data", "emotionquery", "--limit", "6", "--emotions", "joy,fear,sadness",
            "--devices", "2"]
    clean = tmp_path / "clean.safetensors"
    _ok(_emoexp([*args, "--out", str(clean)]))
    killed = tmp_path / "killed.safetensors"
    _kill_9_when(args, killed, lambda work: bool(list(work.glob("state-rank*"))))
    _ok(_emoexp([*args, "--out", str(killed)]))
    a, b = EmotionVectors.load(clean), EmotionVectors.load(killed)
    for e in a.emotions:
        assert torch.equal(a[e], b[e])
    assert clean.with_suffix(".responses.jsonl").read_text() == killed.with_suffix(".responses.jsonl").read_text()


def test_generation_kill_9_and_resume_equals_clean_run(extracted, tmp_path):
    """Pooled batches (many grid entries per batch, one direction per row) resume after a
    kill -9 mid-run: the rerun redoes only the batches not complete on disk and writes what a
    clean run writes."""
    args = ["generate", *COMMON, "--data", "emotionquery_plus", "--limit", "4", "--targets", "joy,anger",
            "--alphas=-1,0,1,2,3", "--batch_size", "2", "--max_new_tokens", "12", "--vectors", str(extracted[1]),
            "--devices", "2"]
    clean = tmp_path / "clean.jsonl"
    _ok(_emoexp([*args, "--out", str(clean)]))
    killed = tmp_path / "killed.jsonl"
    work = killed.with_name(killed.name + ".work")

    def per_batch() -> dict[int, int]:
        counts: dict[int, int] = {}
        for f in work.glob("rank*.jsonl"):
            for line in f.read_text().splitlines():
                try:
                    b = json.loads(line)["batch"]
                except json.JSONDecodeError:
                    continue  # a line being written, or cut by the kill
                counts[b] = counts.get(b, 0) + 1
        return counts

    _kill_9_when(args, killed, lambda _: sum(per_batch().values()) >= 6)
    before = per_batch()
    _ok(_emoexp([*args, "--out", str(killed)]))
    assert killed.read_text() == clean.read_text()
    after = per_batch()
    assert all(after[b] == n for b, n in before.items() if n == 2)  # complete batches were not redone
    assert len(after) > len(before)


def test_resume_refuses_a_different_config(extracted, tmp_path):
    out = tmp_path / "x.safetensors"
    work = out.with_name(out.name + ".work")
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"sha": "old", "fields": {"site": "mlp"}}))
    proc = _emoexp(["extract", *COMMON, "--limit", "1", "--out", str(out)])
    assert proc.returncode != 0 and "different config" in proc.stderr and "site: 'mlp' -> 'attn'" in proc.stderr
