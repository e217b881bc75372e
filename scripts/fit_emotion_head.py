"""Fit the default EPS classifier: a softmax layer over MiniLM embeddings, trained on emoexp's own
labelled replies (emoexp/data/emotion_text_train.jsonl), L2 strength chosen by 5-fold CV on those
replies alone; writes emoexp/data/emotion_head.safetensors (9 KB). The held-out replies and the
paper authors' text are never seen here: `emoexp validate-scorer` measures on them.

Run: .venv/bin/python scripts/fit_emotion_head.py
"""

from __future__ import annotations

import argparse
import json

from emoexp.eval.classifiers import HEAD_PATH, fit_head, load_labelled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default=str(HEAD_PATH.with_name("emotion_text_train.jsonl")))
    p.add_argument("--out", default=str(HEAD_PATH))
    args = p.parse_args()
    head = fit_head(*load_labelled(args.train))
    head.save(args.out)
    print(json.dumps(head.meta, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
