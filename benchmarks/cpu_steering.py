"""CPU benchmarks on SmolLM2-135M-Instruct: steering overhead, extraction cost, batch scaling.

Every comparison is measured in one run, interleaved (A, B, A, B, ...), and reported as a
ratio of medians, because these machines are shared and noisy. Results are printed as a table
and written, with the machine's description, to docs/benchmarks.md (section "CPU").

Run:  .venv/bin/python benchmarks/cpu_steering.py [--repeats 5] [--new_tokens 32] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import DOC, machine, write_section

from emoexp import find_layers, steer
from emoexp.datasets import EMOTIONS, load_queries
from emoexp.extraction import extract_batch, extraction_items
from emoexp.fold import BiasSlots, fold_into_bias
from emoexp.generation import compile_options, generate, left_pad
from emoexp.models import load_model
from emoexp.prompts import Conditioning, encode_prompts, generation_prompt, render_prompt


def _generate(model, tok, prompts, new_tokens: int, extra: dict | None = None) -> tuple[float, list[list[int]]]:
    ids, mask = left_pad(prompts, tok.pad_token_id)
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None,
                         **(extra or {"disable_compile": True}))
    dt = time.perf_counter() - t
    return dt, out[:, ids.shape[1]:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--out", default=str(DOC))
    ap.add_argument("--compile", action="store_true",
                    help="also the fast path: static cache + inductor-compiled decoding, unsteered vs BiasSlots "
                         "(two model copies, interleaved; ~3 min of compilation on 2 cores)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("smollm2")
    cond = Conditioning()
    qs = load_queries("emotionquery_plus", limit=11)
    prompts = encode_prompts(tok, [generation_prompt(tok, q.query, "unsteered", None, cond) for q in qs])
    n_layers, hidden = len(find_layers(model)), model.config.hidden_size
    d = torch.randn(n_layers, hidden, generator=torch.Generator().manual_seed(0)) * 0.5
    rows: list[tuple[str, str]] = []
    results: dict[str, float] = {}

    def tps(batch: int, mode: str) -> float:
        p = prompts[:batch]
        if mode == "hooks":
            with steer(model, d, site="attn"):
                dt, _ = _generate(model, tok, p, args.new_tokens)
        elif mode == "fold":
            with fold_into_bias(model, d, site="attn", verify=False):
                dt, _ = _generate(model, tok, p, args.new_tokens)
        else:
            dt, _ = _generate(model, tok, p, args.new_tokens)
        return batch * args.new_tokens / dt

    _generate(model, tok, prompts[:2], 4)  # warm-up
    # 1. steered vs unsteered at batch 1 and 16, interleaved
    for batch in (1, 16):
        samples: dict[str, list[float]] = {"plain": [], "hooks": [], "fold": []}
        for _ in range(args.repeats):
            for mode, values in samples.items():
                values.append(tps(batch, mode))
        med = {k: statistics.median(v) for k, v in samples.items()}
        results.update({f"b{batch}_{k}": v for k, v in med.items()})
        rows.append((f"batch {batch}: unsteered tok/s", f"{med['plain']:.1f}"))
        rows.append((f"batch {batch}: steered (hooks, attn, 30 layers) tok/s", f"{med['hooks']:.1f}"))
        rows.append((f"batch {batch}: steered (bias fold) tok/s", f"{med['fold']:.1f}"))
        rows.append((f"batch {batch}: steered ÷ unsteered (hooks / fold)",
                     f"{med['hooks'] / med['plain']:.3f} / {med['fold'] / med['plain']:.3f}"))
    # 2. extraction (generate + capture) vs generating the same responses, batch 16, interleaved:
    #    capture while decoding (the default) and one forward pass afterwards
    eq = load_queries("emotionquery", limit=2, emotions=list(EMOTIONS))
    items = extraction_items(eq, list(EMOTIONS))[:16]
    ep = encode_prompts(tok, [render_prompt(tok, it.query.query, it.emotion if it.condition == "emotional" else None,
                                            cond) for it in items])
    times: dict[str, list[float]] = {"gen": [], "decode": [], "forward": []}
    for _ in range(args.repeats):
        for mode, spent in times.items():
            t = time.perf_counter()
            if mode == "gen":
                generate(model, tok, ep, max_new_tokens=args.new_tokens)
            else:
                extract_batch(model, tok, items, ep, site="attn", scope="response", max_new_tokens=args.new_tokens,
                              capture=mode)
            spent.append(time.perf_counter() - t)
    g = statistics.median(times["gen"])
    rows.append(("extraction ÷ generation, capture while decoding (batch 16, attn, 30 layers)",
                 f"{statistics.median(times['decode']) / g:.3f}"))
    rows.append(("extraction ÷ generation, capture in a forward pass afterwards",
                 f"{statistics.median(times['forward']) / g:.3f}"))
    # 3. throughput vs batch size
    base = None
    for batch in (1, 4, 16, 64):
        p = (prompts * 4)[:batch]
        v = statistics.median(batch * args.new_tokens / _generate(model, tok, p, args.new_tokens)[0]
                              for _ in range(max(1, args.repeats - 1)))
        base = base or v
        rows.append((f"throughput at batch {batch} (tok/s, × batch 1)", f"{v:.1f} ({v / base:.2f}×)"))
    # 4. the fast path (emoexp generate --compile): two copies, one with steering biases, interleaved
    if args.compile:
        steered_model, _ = load_model("smollm2")
        slots = BiasSlots(steered_model, site="attn")
        slots.set(d)
        opts = compile_options("default", "inductor", "cpu")
        for m in (model, steered_model):
            for batch in (1, 16):
                _generate(m, tok, prompts[:batch], 4, opts)  # compile per shape
        for batch in (1, 16):
            fast: dict[str, list[float]] = {"eager": [], "compiled": [], "compiled steered": []}
            for _ in range(args.repeats):
                eager_s = _generate(model, tok, prompts[:batch], args.new_tokens)[0]
                fast["eager"].append(batch * args.new_tokens / eager_s)
                for name, m in (("compiled", model), ("compiled steered", steered_model)):
                    fast[name].append(batch * args.new_tokens / _generate(m, tok, prompts[:batch], args.new_tokens,
                                                                          opts)[0])
            med = {k: statistics.median(v) for k, v in fast.items()}
            rows.append((f"batch {batch}: static cache + compiled (inductor, default) tok/s, × eager",
                         f"{med['compiled']:.1f} ({med['compiled'] / med['eager']:.2f}×)"))
            rows.append((f"batch {batch}: compiled steered (BiasSlots) ÷ compiled unsteered",
                         f"{med['compiled steered'] / med['compiled']:.3f}"))
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    section = (f"## CPU: SmolLM2-135M-Instruct (float32), {args.new_tokens} new tokens, greedy, "
               f"median of {args.repeats} interleaved repeats\n\nMachine: {machine()}. Measured "
               f"{time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/cpu_steering.py"
               f"{' --compile' if args.compile else ''} --repeats {args.repeats}`.\n\n{table}\n")
    write_section(args.out, "## CPU:", section)


if __name__ == "__main__":
    main()
