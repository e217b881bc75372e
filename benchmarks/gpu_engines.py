"""One-script GPU benchmark of the vLLM engine (for a lent H100/H200): tokens/s unsteered, steered with
one direction, and steered with a different direction per row, at batch 1, 64 and 256, compiled
(vLLM's default: inductor + CUDA graphs), bfloat16, a fixed number of new tokens per row.

EasySteer reports 25,310 tok/s steered with CUDA graphs at batch 256 on one GPU; this is the
comparison it is ready for. Without weights on the machine (no hub there), ``--random llama-1b`` or
``--random llama-8b`` writes a random-weight Llama of that shape first (throughput does not depend on
the weights' values; every row makes exactly ``--new_tokens`` tokens).

Needs vllm (GPU build) and emoexp importable on the machine; prints one table and writes JSON:
    python benchmarks/gpu_engines.py --random llama-1b --out $OUT/gpu_engines.json   # needs: a GPU with vllm
    python benchmarks/gpu_engines.py --model /path/to/Llama-3.1-8B-Instruct            # needs: a GPU with vllm
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "llama-1b": (2048, 8192, 16, 32, 8),
    "llama-8b": (4096, 14336, 32, 32, 8),
}


def random_llama(shape: str, folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, n, a, kv = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, vocab_size=128256, max_position_embeddings=4096, torch_dtype="bfloat16")
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("cuda"):
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a transformers folder")
    ap.add_argument("--random", choices=sorted(SHAPES), help="benchmark a random-weight Llama of this shape")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--prompt_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="gpu_engines.json")
    args = ap.parse_args()
    if not args.model and not args.random:
        ap.error("pass --model FOLDER or --random SHAPE")
    import torch

    from emoexp.engines.vllm_engine import VllmEngine, vllm_version

    path = args.model or str(random_llama(args.random, Path("/tmp") / f"random-{args.random}"))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    batches = [int(b) for b in args.batches.split(",")]
    t = time.perf_counter()
    eng = VllmEngine(path, site="attn", layers=range(n_layers), num_layers=n_layers, hidden_size=hidden,
                     dtype="bfloat16", slots=max(batches) + 1, max_model_len=args.prompt_tokens + args.new_tokens + 8,
                     max_num_seqs=max(batches))
    startup = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, 30000, (args.prompt_tokens,), generator=g).tolist() for _ in range(max(batches))]
    change = eng.self_test(prompts[0][:16])
    d = torch.randn(n_layers, hidden, generator=g) * 0.05
    per_row = [d * k for k in torch.linspace(-1, 4, max(batches)).tolist()]
    modes = {"unsteered": lambda b: None, "steered (one direction)": lambda b: [d] * b,
             "steered (a direction per row)": lambda b: per_row[:b]}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for b in batches:
            for name, dirs in modes.items():
                t = time.perf_counter()
                eng.generate(prompts[:b], dirs(b), max_new_tokens=args.new_tokens, ignore_eos=True)
                times.setdefault(f"{name} @ {b}", []).append(time.perf_counter() - t)
    tps = {k: int(k.rsplit("@ ", 1)[1]) * args.new_tokens / statistics.median(v) for k, v in times.items()}
    report = {"gpu": torch.cuda.get_device_name(0), "vllm": vllm_version(), "model": path, "startup_s": startup,
              "self_test_min_change": min(change.values()), "new_tokens": args.new_tokens,
              "prompt_tokens": args.prompt_tokens, "tokens_per_s": tps,
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
