"""``emoexp serve`` under load: requests/s and tokens/s at 1, 8 and 32 concurrent clients, unsteered and
steered (each client its own emotion), SmolLM2-135M-Instruct, greedy, a fixed reply length.

The server runs in this process (uvicorn in a thread, the real batcher and engine); clients are
threads with the ``openai`` client over loopback HTTP, each sending ``--per_client`` requests one
after another. The line goes to docs/benchmarks.md (section "Serve") and docs/serve.md quotes it.

Run: .venv/bin/python benchmarks/serve.py [--engine vllm (in .venv-vllm)] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from report import DOC, machine, write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

EMOTIONS = ["joy", "anger", "disgust", "fear", "sadness"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", help="an EV file of SmolLM2 (default: random directions of EV size)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--per_client", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=str(DOC))
    args = ap.parse_args()
    import torch

    from emoexp import EmotionVectors
    from emoexp.models import inspect_model
    from emoexp.serve import Args, load_served
    from emoexp.serve.app import make_app

    path = args.vectors
    if path is None:
        info = inspect_model("smollm2")
        g = torch.Generator().manual_seed(0)
        path = "/tmp/emoexp-serve-bench-evs.safetensors"
        EmotionVectors({e: torch.randn(30, 576, generator=g) * 0.05 for e in EMOTIONS},
                       {"site": "attn", "model_spec": "smollm2", "model_id": info.model_id,
                        "model_fingerprint": info.fingerprint}).save(path)
    import openai
    import uvicorn
    from conftest import free_port

    served = load_served(Args(vectors=path, engine=args.engine, max_batch=64, default_max_tokens=args.tokens))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(served), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=3600)

    def ask(i: int, steered: bool) -> int:
        made = 0
        for k in range(args.per_client):
            extra = {"emotions": {EMOTIONS[(i + k) % 5]: 1.0}} if steered else None
            r = client.completions.create(model="smollm2", prompt=f"Question {i}.{k}: tell me about your day.",
                                          max_tokens=args.tokens, extra_body=extra)
            made += r.usage.completion_tokens
        return made

    ask(0, True)  # warm up
    rows = []
    for n in [int(c) for c in args.clients.split(",")]:
        for steered in (False, True):
            t = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                tokens = sum(pool.map(lambda i, s=steered: ask(i, s), range(n)))
            dt = time.perf_counter() - t
            rows.append((n, steered, n * args.per_client / dt, tokens / dt))
            print(rows[-1], flush=True)
    server.should_exit = True
    served.batcher.close()
    lines = ["| clients | steering | requests/s | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {n} | {'each client its own emotion' if s else 'none'} | {rps:.2f} | {tps:.0f} |"
              for n, s, rps, tps in rows]
    section = (f"## Serve: `emoexp serve` under concurrent clients ({args.engine} engine)\n\n"
               f"{machine()}; SmolLM2-135M-Instruct, up to {args.tokens} new tokens, greedy, {args.per_client} "
               f"requests per client in a row, loopback HTTP with the openai client; measured "
               f"{time.strftime('%Y-%m-%d')} by `benchmarks/serve.py --engine {args.engine}`.\n\n"
               + "\n".join(lines) + "\n\n")
    print(section)
    write_section(args.out, f"## Serve: `emoexp serve` under concurrent clients ({args.engine}", section)


if __name__ == "__main__":
    main()
