"""GPU benchmark (a lent H100/H200): steered vs unsteered decode against the HBM roofline.

Random-weight model with Llama-3.1-8B's shape in bf16 (speed does not depend on weight
values; nothing to download). Needs only torch, transformers and emoexp's core modules (no
mlflow/datasets/evaluate). Prints a Markdown table; ``--out`` appends it to a file.

    python benchmarks/gpu_decode.py --new_tokens 128 --out docs/benchmarks-gpu.md

Roofline: one decode step must read every weight once, so tokens/s at batch 1 cannot exceed
HBM bandwidth ÷ weight bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emoexp import capture, find_layers, steer
from emoexp.fold import fold_into_bias

BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "H100": 3.35e12}


def _bandwidth(name: str) -> float:
    for key, bw in BANDWIDTH.items():
        if key in name:
            return bw
    return 3.35e12


def _model():
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, torch_dtype="bfloat16")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def _decode(model, batch: int, new_tokens: int, **kw) -> float:
    ids = torch.randint(10, 1000, (batch, 32), device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile", action="store_true", help="also static cache + torch.compile with the bias fold")
    args = ap.parse_args()
    model = _model()
    name = torch.cuda.get_device_name()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roof = _bandwidth(name) / weight_bytes
    n, h = len(find_layers(model)), model.config.hidden_size
    d = torch.randn(n, h) * 0.1
    rows = [("device", name), ("weights (GB)", f"{weight_bytes / 1e9:.1f}"), ("HBM roofline, batch 1 (tok/s)", f"{roof:.0f}")]
    _decode(model, 1, 8)
    for batch in (1, 32):
        res: dict[str, list[float]] = {"unsteered": [], "hooks": [], "fold": []}
        for _ in range(args.repeats):
            res["unsteered"].append(_decode(model, batch, args.new_tokens))
            with steer(model, d, site="attn"):
                res["hooks"].append(_decode(model, batch, args.new_tokens))
            with fold_into_bias(model, d, site="attn", verify=False):
                res["fold"].append(_decode(model, batch, args.new_tokens))
        med = {k: statistics.median(v) for k, v in res.items()}
        for k, v in med.items():
            extra = f" ({v / roof:.0%} of roofline)" if batch == 1 else ""
            rows.append((f"eager decode, batch {batch}, {k} (tok/s)", f"{v:.0f}{extra}"))
        rows.append((f"batch {batch}: steering overhead hooks / fold",
                     f"{1 - med['hooks'] / med['unsteered']:.1%} / {1 - med['fold'] / med['unsteered']:.1%}"))
    if args.compile:
        with fold_into_bias(model, d, site="attn", verify=False):
            fast = torch.compile(model, mode="default")
            _decode(fast, 1, 8, cache_implementation="static")
            v = statistics.median(_decode(fast, 1, args.new_tokens, cache_implementation="static")
                                  for _ in range(args.repeats))
            rows.append(("static cache + compile + fold, batch 1 (tok/s)", f"{v:.0f} ({v / roof:.0%} of roofline)"))
    ids = torch.randint(10, 1000, (16, 512), device="cuda")
    mask = torch.ones_like(ids)
    for label, fn in (("plain forward", lambda: model(ids, attention_mask=mask, use_cache=False)),
                      ("forward + capture (all layers)", lambda: capture(model, ids, mask, mask.bool()))):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.repeats):
            with torch.no_grad():
                fn()
        torch.cuda.synchronize()
        rows.append((f"16 x 512 {label} (tok/s)", f"{16 * 512 * args.repeats / (time.perf_counter() - t):.0f}"))
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n## GPU: random Llama-3.1-8B shape, bf16, {args.new_tokens} new tokens\n\n{table}\n")


if __name__ == "__main__":
    main()
