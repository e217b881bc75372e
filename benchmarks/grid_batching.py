"""CPU benchmark: the generation stage of the default job, one grid entry per batch vs pooled.

``emoexp generate`` pools the (entry, query) cells of the whole grid into shared batches,
each row steered by its own direction (``pool_entries: true``, the default). With a short
query list, one entry per batch (``pool_entries: false``, what the compiled path does) caps
the batch at the number of queries. This runs the default job's generation grid (SmolLM2,
prefill conditioning, 30 EmotionQuery+ queries x 31 grid entries, 40 new tokens) both ways at
batch 16 and 64, each as a fresh ``emoexp generate`` process (model load included), and
checks that every response is identical across the four runs.

Run:  .venv/bin/python benchmarks/grid_batching.py [--vectors outputs/run/latest/evs.safetensors]
(without ``--vectors`` it first extracts EVs from 4 queries per emotion).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import DOC, machine, write_section

COMMON = ["--model", "smollm2", "--conditioning", "prefill", "--max_new_tokens", "40"]


def _emoexp(args: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emoexp", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", default=None)
    ap.add_argument("--limit", type=int, default=5, help="EmotionQuery+ queries per label")
    ap.add_argument("--out", default=str(DOC))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="emoexp-grid-"))
    vectors = args.vectors
    if vectors is None:
        vectors = str(tmp / "evs.safetensors")
        _emoexp(["extract", *COMMON, "--limit", "4", "--site", "attn", "--out", vectors])
    runs = [(False, 16), (True, 16), (False, 64), (True, 64)]
    rows, seconds, outputs = [], {}, {}
    for pool, batch in runs:
        out = tmp / f"gen-{pool}-{batch}.jsonl"
        seconds[(pool, batch)] = _emoexp(["generate", *COMMON, "--vectors", vectors, "--limit", str(args.limit),
                                          "--alphas=-1,0,1,2,4", "--batch_size", str(batch),
                                          "--pool_entries", str(pool).lower(), "--out", str(out)])
        outputs[(pool, batch)] = {(r["entry"], r["index"]): r["response"]
                                  for r in map(json.loads, out.read_text().splitlines())}
        print(f"pool_entries={pool} batch_size={batch}: {seconds[(pool, batch)]:.1f} s", flush=True)
    ref = outputs[runs[0]]
    base = seconds[(False, 16)]
    for pool, batch in runs:
        same = sum(outputs[(pool, batch)].get(k) == v for k, v in ref.items())
        rows.append((f"{'pooled' if pool else 'one entry per batch'}, batch_size {batch}",
                     f"{seconds[(pool, batch)]:.1f} s ({base / seconds[(pool, batch)]:.2f}×)",
                     f"{same} / {len(ref)}"))
    table = ("| generation stage | wall (speed-up) | responses identical to the first |\n|---|---|---|\n"
             + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows))
    print(table)
    section = (f"## Grid batching: the default job's generation stage ({len(ref)} generations)\n\n"
               f"Machine: {machine()}. Measured {time.strftime('%Y-%m-%d %H:%M')} with "
               f"`python benchmarks/grid_batching.py`; each run a fresh process, model load included.\n\n{table}\n")
    write_section(args.out, "## Grid batching", section)


if __name__ == "__main__":
    main()
