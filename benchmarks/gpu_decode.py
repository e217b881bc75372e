"""GPU benchmark (a lent H100/H200): steered vs unsteered decoding against the HBM roofline.

Random-weight model with Llama-3.1-8B's shape in bf16 (speed does not depend on weight
values; nothing to download). Needs only torch, transformers and emoexp's core modules (no
mlflow/datasets/evaluate). Prints a Markdown table; ``--out`` rewrites the "GPU" section of
that file (docs/benchmarks.md).

    python benchmarks/gpu_decode.py --out docs/benchmarks.md          # on the GPU machine
    python benchmarks/gpu_decode.py --smoke                           # tiny model on CPU: checks the script runs

Roofline: one decode step must read every weight once, so tokens/s at batch 1 cannot exceed
HBM bandwidth ÷ weight bytes.

Measured, each median of ``--repeats``:
  1. eager ``generate`` (transformers' auto-compile off): unsteered, steered with hooks,
     steered with the bias fold — batch 1 and 32, interleaved;
  2. the fast path of ``emoexp generate --compile``: static KV cache + compiled decoding step
     (``--modes``, e.g. ``default`` and ``reduce-overhead`` = CUDA graphs), unsteered on the
     untouched model, then steered with :class:`emoexp.fold.BiasSlots` set in place — and a
     check that the compiled path really steers (the scores change);
  3. extraction (generation with :class:`emoexp.activations.DecodeCapture`) ÷ generation, and a
     16 x 512 forward with capture ÷ a plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from report import write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without emoexp installed (GPU machine)

from emoexp import capture, find_layers, steer
from emoexp.activations import DecodeCapture
from emoexp.fold import BiasSlots, fold_into_bias
from emoexp.generation import compile_options

BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12}


def _bandwidth(name: str) -> float:
    return next((bw for key, bw in BANDWIDTH.items() if key in name), 3.35e12)


def _model(smoke: bool, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if smoke:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        dtype = torch.float32
    else:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rope_theta=500000.0)
        dtype = torch.bfloat16
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _ids(batch: int, device: str, width: int = 32) -> torch.Tensor:
    return torch.randint(10, 500, (batch, width), device=device, generator=torch.Generator(device).manual_seed(0))


def _decode(model, batch: int, new_tokens: int, device: str, extra: dict | None = None, cap: bool = False) -> float:
    ids = _ids(batch, device)
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
              eos_token_id=None, **(extra or {"disable_compile": True}))
    _sync(device)
    t = time.perf_counter()
    if cap:
        with DecodeCapture(model, mask, "response", [], max_response=new_tokens - 1, site="attn"):
            model.generate(ids, attention_mask=mask, **kw)
    else:
        model.generate(ids, attention_mask=mask, **kw)
    _sync(device)
    return batch * new_tokens / (time.perf_counter() - t)


def _scores(model, device: str, extra: dict) -> list[torch.Tensor]:
    ids = _ids(1, device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0,
                         eos_token_id=None, return_dict_in_generate=True, output_scores=True, **extra)
    return [s.float() for s in out.scores]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="default,reduce-overhead", help="torch.compile modes for the fast path")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (eager backend): checks the script")
    ap.add_argument("--out", default=None, help="Markdown file whose '## GPU' section is rewritten")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    backend = "eager" if args.smoke else "inductor"
    if args.smoke:
        args.new_tokens, args.repeats = min(args.new_tokens, 8), 1
    torch.manual_seed(0)
    model = _model(args.smoke, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke)"
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roof = _bandwidth(name) / weight_bytes
    n, h = len(find_layers(model)), model.config.hidden_size
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(1)) * 0.5
    versions = f"{torch.__version__} / {__import__('transformers').__version__}"
    rows = [("device", name), ("torch / transformers", versions),
            ("weights (GB)", f"{weight_bytes / 1e9:.2f}"), ("HBM roofline, batch 1 (tok/s)", f"{roof:.0f}")]
    pct = (lambda v: f" ({v / roof:.0%} of roofline)") if device == "cuda" else (lambda v: "")

    def row(label: str, v: float, batch: int) -> None:
        rows.append((label, f"{v:.0f}{pct(v) if batch == 1 else ''}"))

    # 1. eager
    _decode(model, 1, 8, device)
    for batch in (1, 32):
        res: dict[str, list[float]] = {"unsteered": [], "hooks": [], "fold": []}
        for _ in range(args.repeats):
            res["unsteered"].append(_decode(model, batch, args.new_tokens, device))
            with steer(model, d, site="attn"):
                res["hooks"].append(_decode(model, batch, args.new_tokens, device))
            with fold_into_bias(model, d, site="attn", verify=False):
                res["fold"].append(_decode(model, batch, args.new_tokens, device))
        med = {k: statistics.median(v) for k, v in res.items()}
        for k, v in med.items():
            row(f"eager, batch {batch}, {k} (tok/s)", v, batch)
        rows.append((f"eager, batch {batch}: steering overhead hooks / fold",
                     f"{1 - med['hooks'] / med['unsteered']:.1%} / {1 - med['fold'] / med['unsteered']:.1%}"))
        print("\n".join(f"{a}: {b}" for a, b in rows[-4:]), flush=True)
    # 2. the fast path, per compile mode
    for mode in [m for m in args.modes.split(",") if m]:
        opts = compile_options(mode, backend, device)
        model.__dict__.pop("_compiled_call", None)
        t = time.perf_counter()
        for batch in (1, 32):
            _decode(model, batch, 8, device, opts)  # compile for this shape
        rows.append((f"compile {mode}: warm-up incl. compilation (s)", f"{time.perf_counter() - t:.0f}"))
        plain = {b: statistics.median(_decode(model, b, args.new_tokens, device, opts) for _ in range(args.repeats))
                 for b in (1, 32)}
        base_scores = _scores(model, device, opts)
        slots = BiasSlots(model, site="attn")
        slots.set(d)
        model.__dict__.pop("_compiled_call", None)  # the model now has biases: a fresh compiled step
        for batch in (1, 32):
            _decode(model, batch, 8, device, opts)
        steered = {b: statistics.median(_decode(model, b, args.new_tokens, device, opts) for _ in range(args.repeats))
                   for b in (1, 32)}
        plus = _scores(model, device, opts)
        moved = max(float((a - b).abs().max()) for a, b in zip(plus, base_scores))
        slots.set(-d)  # rewritten in place: the same compiled step must follow, not replay +d
        flipped = max(float((a - b).abs().max()) for a, b in zip(_scores(model, device, opts), plus))
        slots.remove()
        model.__dict__.pop("_compiled_call", None)
        for batch in (1, 32):
            row(f"compile {mode}, batch {batch}, unsteered (tok/s)", plain[batch], batch)
            row(f"compile {mode}, batch {batch}, steered, BiasSlots (tok/s)", steered[batch], batch)
            overhead = 1 - steered[batch] / plain[batch]
            rows.append((f"compile {mode}, batch {batch}: steering overhead", f"{overhead:.1%}"))
        rows.append((f"compile {mode}: max |Δ score| +d vs unsteered / −d vs +d", f"{moved:.3g} / {flipped:.3g}"))
        print("\n".join(f"{a}: {b}" for a, b in rows[-8:]), flush=True)
    # 3. capture cost
    for batch in (1, 32):
        g = statistics.median(_decode(model, batch, args.new_tokens, device) for _ in range(args.repeats))
        c = statistics.median(_decode(model, batch, args.new_tokens, device, cap=True) for _ in range(args.repeats))
        rows.append((f"batch {batch}: generation with DecodeCapture (all layers) ÷ generation (time)", f"{g / c:.3f}"))
    ids = _ids(16 if not args.smoke else 2, device, 512 if not args.smoke else 64)
    mask = torch.ones_like(ids)
    timing = {}
    for label, fn in (("plain forward", lambda: model(ids, attention_mask=mask, use_cache=False)),
                      ("forward + capture (all layers)", lambda: capture(model, ids, mask, mask.bool(), site="attn"))):
        with torch.no_grad():
            fn()
            _sync(device)
            t = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            _sync(device)
        timing[label] = ids.numel() * args.repeats / (time.perf_counter() - t)
        rows.append((f"{ids.shape[0]} x {ids.shape[1]} {label} (tok/s)", f"{timing[label]:.0f}"))
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.out:
        shape = "tiny random Llama on CPU (smoke)" if args.smoke else "random Llama-3.1-8B shape, bf16"
        section = (f"## GPU: {shape}, {args.new_tokens} new tokens, greedy, "
                   f"median of {args.repeats}\n\nMeasured {time.strftime('%Y-%m-%d %H:%M')} with "
                   f"`python benchmarks/gpu_decode.py`.\n\n{table}\n")
        write_section(args.out, "## GPU:", section)


if __name__ == "__main__":
    main()
