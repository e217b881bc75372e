"""Engines on this CPU: tokens/s of transformers and vLLM, unsteered and steered, beside repeng and
steering-vectors, at batch 1, 16 and 64 (SmolLM2-135M-Instruct, float32, greedy, a fixed number of
new tokens per row so every method does the same work).

Methods (all on the same EmotionQuery+ prompts):
- transformers: ``emoexp.generation.generate``; steered with ``emoexp.steer`` hooks at the attention
  output of every layer, one direction for the batch, or a pooled alpha grid (a different direction
  per row, ``per_row=True``);
- vLLM (compiled, its default): :class:`emoexp.engines.vllm_engine.VllmEngine`, unsteered, one
  direction, and the pooled grid (one slot per row);
- repeng 0.4.0 ``ControlModel`` (its layers -5 ... -17) and steering-vectors 0.12.2
  ``SteeringVector.apply`` (decoder-block outputs at every layer), one direction each.

Interleaved repeats (every method once per round), median tokens/s; ratios are taken within this one
run. The table goes to docs/benchmarks.md (section "Engines") and docs/engines.md quotes it.

Install and run (in .venv-vllm; the peers are installed there with --no-deps by --peers):
    bash scripts/install.sh --vllm
    .venv-vllm/bin/python benchmarks/engines.py [--repeats 3] [--new_tokens 32] [--peers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from report import DOC, machine, write_section

BATCHES = (1, 16, 64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--peers", action="store_true", help="also repeng and steering-vectors (installed --no-deps)")
    ap.add_argument("--eager", action="store_true", help="vLLM with enforce_eager instead of its compiled graph")
    ap.add_argument("--out", default=str(DOC))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from cpu_steering import _generate

    from emoexp.datasets import load_queries
    from emoexp.engines.vllm_engine import vllm_version
    from emoexp.models import load_model
    from emoexp.prompts import Conditioning, encode_prompts, generation_prompt
    from emoexp.steering import steer

    torch.manual_seed(0)
    model, tok = load_model("smollm2")
    cond = Conditioning()
    qs = load_queries("emotionquery_plus", limit=11)
    prompts = encode_prompts(tok, [generation_prompt(tok, q.query, "unsteered", None, cond) for q in qs], cond)
    d, grid = _directions(max(batches))  # a different direction per row in the grid
    n = args.new_tokens

    # vLLM runs in its own process: in-process it binds OpenMP threads to cores for its worker and the
    # transformers methods sharing that pool ran ~5x slower (seen here); one engine runs at a time either way.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_vllm_child, args=(child_conn, args.eager, max(batches), n), daemon=True)
    child.start()
    startup = conn.recv()

    def tf(p, dirs):
        if dirs is None:
            return _generate(model, tok, p, n)
        per_row = isinstance(dirs, list)
        with steer(model, torch.stack(dirs) if per_row else dirs, site="attn", per_row=per_row):
            return _generate(model, tok, p, n)

    def vl(mode):
        def run(p):
            conn.send((mode, len(p)))
            return conn.recv()
        return run

    methods = {
        "transformers unsteered": lambda p: tf(p, None),
        "transformers steered (one direction)": lambda p: tf(p, d),
        "transformers steered (alpha grid, a direction per row)": lambda p: tf(p, grid[: len(p)]),
        "vLLM unsteered": vl("none"),
        "vLLM steered (one direction)": vl("one"),
        "vLLM steered (alpha grid, a direction per row)": vl("grid"),
    }
    if args.peers:
        methods.update(_peers(model, tok, d, n))
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(args.repeats):
        for b in batches:
            p = prompts[:b]
            for name, fn in methods.items():
                t = time.perf_counter()
                fn(p)
                times.setdefault((name, b), []).append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    conn.send(None)
    child.join(60)
    tps = {k: b * n / statistics.median(v) for k, v in times.items() for b in [k[1]]}
    _report(tps, batches, methods, startup, vllm_version(), args)


def _vllm_child(conn, eager: bool, max_batch: int, n: int) -> None:
    """The vLLM side: builds the engine, then generates what the parent asks for, one request at a time."""
    from emoexp.datasets import load_queries
    from emoexp.engines.vllm_engine import VllmEngine
    from emoexp.models import load_tokenizer, model_dir
    from emoexp.prompts import Conditioning, encode_prompts, generation_prompt

    tok = load_tokenizer("smollm2")
    cond = Conditioning()
    qs = load_queries("emotionquery_plus", limit=11)
    prompts = encode_prompts(tok, [generation_prompt(tok, q.query, "unsteered", None, cond) for q in qs], cond)
    d, grid = _directions(max_batch)
    t = time.perf_counter()
    eng = VllmEngine(str(model_dir("smollm2")), site="attn", layers=range(d.shape[0]), num_layers=d.shape[0],
                     hidden_size=d.shape[1], compiled=not eager, slots=max_batch + 1)
    startup = time.perf_counter() - t
    eng.self_test(prompts[0])
    conn.send(startup)
    while (msg := conn.recv()) is not None:
        mode, b = msg
        rows = {"none": None, "one": [d] * b, "grid": grid[:b]}[mode]
        eng.generate(prompts[:b], rows, max_new_tokens=n, ignore_eos=True)
        conn.send(True)


def _directions(max_batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One random direction (norm ~1.2 per layer) and an alpha grid of it, a different scale per row."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(30, 576, generator=g) * 0.05
    return d, [d * a for a in np.linspace(-1, 4, max_batch)]


def _peers(model, tok, d, n):
    """repeng and steering-vectors, one direction each, at the same batch and token count."""
    from cpu_steering import _generate
    from peers import _numpy_compat, repeng_layers

    _numpy_compat()
    from repeng import ControlModel, ControlVector
    from steering_vectors import SteeringVector

    n_layers = model.config.num_hidden_layers
    layers = [l % n_layers for l in repeng_layers(n_layers)]
    rv = ControlVector(model_type=model.config.model_type, directions={l: d[l].numpy() for l in layers})
    sv = SteeringVector(layer_activations={l: d[l] for l in range(n_layers)}, layer_type="decoder_block")

    def repeng(p):
        cm = ControlModel(model, layers)
        try:
            cm.set_control(rv, 1.0)
            return _generate(cm.model, tok, p, n)
        finally:
            cm.reset()
            cm.unwrap()

    def steering_vectors(p):
        with sv.apply(model, multiplier=1.0):
            return _generate(model, tok, p, n)

    return {"repeng 0.4.0 (one direction)": repeng, "steering-vectors 0.12.2 (one direction)": steering_vectors}


def _report(tps, batches, methods, startup, version, args) -> None:
    head = "| method | " + " | ".join(f"batch {b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (len(batches) + 1)]
    for name in methods:
        lines.append(f"| {name} | " + " | ".join(f"{tps[(name, b)]:.0f}" for b in batches) + " |")
    big = max(batches)
    ratios = {
        "vLLM steered / transformers steered (one direction)":
            tps[("vLLM steered (one direction)", big)] / tps[("transformers steered (one direction)", big)],
        "vLLM steered / transformers steered (alpha grid)":
            tps[("vLLM steered (alpha grid, a direction per row)", big)]
            / tps[("transformers steered (alpha grid, a direction per row)", big)],
        "vLLM steered / vLLM unsteered (one direction)":
            tps[("vLLM steered (one direction)", big)] / tps[("vLLM unsteered", big)],
        "vLLM steered / vLLM unsteered (alpha grid)":
            tps[("vLLM steered (alpha grid, a direction per row)", big)] / tps[("vLLM unsteered", big)],
    }
    mode = "enforce_eager" if args.eager else "compiled (default)"
    section = (f"## Engines: tokens/s, SmolLM2-135M-Instruct float32, {args.new_tokens} new tokens per row, greedy\n\n"
               f"{machine()}; {version} ({mode}, start-up {startup:.0f} s); median of {args.repeats} interleaved "
               f"rounds, measured {time.strftime('%Y-%m-%d')} by `benchmarks/engines.py"
               f"{' --peers' if args.peers else ''}{' --eager' if args.eager else ''}` in .venv-vllm. Steering: "
               "attention output of all 30 layers (repeng: its layers; steering-vectors: block outputs).\n\n"
               + "\n".join(lines) + f"\n\nAt batch {big}, in this run:\n\n"
               + "\n".join(f"- {k}: **{v:.2f}x**" for k, v in ratios.items()) + "\n\n")
    print(section)
    write_section(args.out, "## Engines:", section)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]} @ {k[1]}": v for k, v in tps.items()}, indent=1))


if __name__ == "__main__":
    main()
