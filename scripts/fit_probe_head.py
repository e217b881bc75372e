"""Fit the ``minilm-smollm2`` scorer's head (emoexp/data/emotion_head_smollm2.safetensors).

The recipe is fixed beforehand, not chosen here: the default head's data and normalised text,
its MiniLM embedding followed by SmolLM2-135M-Instruct's layer-30 token mean (256 tokens,
standardised on the training text, scaled by 1/2), L2 1e-3. It was chosen by a nested
leave-one-family-out over layers {10, 20, 25, 30} x L2 {1e-5, 1e-4, 1e-3} and MiniLM alone
(``scripts/scorer_alternatives.py --probe smollm2 --heldout``: every outer fold chose it) with
Qwen2.5's texts dropped before anything was fitted or chosen.

Here: the head is fitted on every training text (Qwen2.5 held out); its softmax temperature is
set on its own out-of-family predictions (leave one family out; calibration only, the argmax does
not change); then it is reported on the held-out family beside the shipped ``minilm`` head, each
with its expected calibration error (10 bins of the top probability), and per family out of
family, which is also the self-scoring check (SmolLM2's own replies read by SmolLM2's states).
Writes the head, ``<out>/probe_head.json`` and ``<out>/probe_head.md``; ``--readings FILE`` also
saves the probe's raw readings of the training and held-out texts (the fixture
tests/test_real_text_scorer.py refits from, after recomputing a sample of them).

Run: .venv/bin/python scripts/fit_probe_head.py --out outputs/scorer   (about 10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emoexp.eval.classification import calibration, classification_report
from emoexp.eval.classifiers import LABELS, PROBE_HEAD_PATH, EmotionHead
from emoexp.eval.real_text import LabelsError, load_labels
from emoexp.eval.training import FAMILY_GROUPS, fit_head, fit_temperature, grouped_cv, probe_readings, training_data
from emoexp.fingerprint import digest

HELD_OUT = ("qwen2.5",)
PROBE = {"model": "smollm2", "layer": 30, "max_length": 256, "scale": 0.5}
L2 = 1e-3


def _summary(name: str, y: np.ndarray, probs: np.ndarray) -> dict:
    rep = classification_report(y, probs.argmax(1), LABELS)
    return {"scorer": name, "n": len(y), "macro-F1": rep["macro_f1"], "macro recall": rep["macro_recall"],
            **{f"{k} R": v["recall"] for k, v in rep["per_label"].items()},
            "neutral P": rep["per_label"]["neutral"]["precision"], "ECE": calibration(probs, y)["ece"]}


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)) / temperature, -1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/scorer")
    p.add_argument("--head", default=str(PROBE_HEAD_PATH))
    p.add_argument("--readings", help="also save the probe's raw readings here (safetensors)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = training_data(held_out=HELD_OUT)
        test = [r for r in load_labels() if FAMILY_GROUPS.get(r["family"], r["family"]) in HELD_OUT]
    except LabelsError as e:  # one line naming the file and row, exit status 2
        print(f"fit_probe_head: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raw = probe_readings(data.texts + [r["text"] for r in test], PROBE, progress=True)
    raw_train, raw_test = raw[:len(data.texts)], raw[len(data.texts):]
    if a.readings:
        from safetensors.torch import save_file

        save_file({"train": raw_train.contiguous(), "heldout": raw_test.contiguous()}, a.readings,
                  metadata={"probe": json.dumps(PROBE), "train": digest(data.texts),
                            "heldout": digest([r["text"] for r in test])})
    head = fit_head(data.texts, data.labels, normalise=True, l2=L2, probe=PROBE, probe_raw=raw_train,
                    meta={"held_out": list(HELD_OUT), "family_groups": FAMILY_GROUPS,
                          "recipe": "minilm head's data + smollm2 layer 30 (nested leave-one-family-out)"})
    x = head.features(data.texts, probe_raw=raw_train)[0]
    cv = grouped_cv(data, normalise=True, style=False, balanced=False, l2=L2, features=x)
    head.meta["temperature"] = fit_temperature(cv["logits"], cv["y"])
    head.meta["grouped_cv_macro_f1"] = round(cv["report"]["macro_f1"], 4)
    head.save(a.head)
    print(f"temperature {head.meta['temperature']:.3f}; wrote {a.head}", flush=True)

    shipped = EmotionHead.load()  # the minilm head: the first 384 features, its own L2 and temperature
    cv_old = grouped_cv(data, normalise=True, style=False, balanced=False, l2=shipped.meta["l2"],
                        features=x[:, :shipped.weight.shape[1]])
    y_test = np.array([LABELS.index(r["label"]) for r in test])
    x_test = head.features([r["text"] for r in test], probe_raw=raw_test)[0]
    new_logits = (x_test @ head.weight.T + head.bias).numpy()
    old_logits = (x_test[:, :shipped.weight.shape[1]] @ shipped.weight.T + shipped.bias).numpy()
    rows = [_summary(f"minilm, out of family ({cv_old['y'].size} texts)", cv_old["y"],
                     _softmax(cv_old["logits"], shipped.meta["temperature"])),
            _summary(f"minilm-smollm2, out of family ({cv['y'].size} texts)", cv["y"],
                     _softmax(cv["logits"], head.meta["temperature"])),
            _summary(f"minilm, held-out {HELD_OUT[0]}", y_test, _softmax(old_logits, shipped.meta["temperature"])),
            _summary(f"minilm-smollm2, held-out {HELD_OUT[0]}", y_test,
                     _softmax(new_logits, head.meta["temperature"]))]
    fams = sorted(cv["by_family"])
    by_family = [{"family (out of family)": f, "texts": cv["by_family"][f]["n"],
                  "minilm macro-F1": cv_old["by_family"][f]["macro_f1"],
                  "minilm-smollm2 macro-F1": cv["by_family"][f]["macro_f1"],
                  "minilm macro recall": cv_old["by_family"][f]["macro_recall"],
                  "minilm-smollm2 macro recall": cv["by_family"][f]["macro_recall"]} for f in fams]
    text = (pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f") + "\n\n"
            + pd.DataFrame(by_family).to_markdown(index=False, floatfmt=".3f")
            + f"\n\nTemperature: minilm {shipped.meta['temperature']:.3f}, minilm-smollm2 "
              f"{head.meta['temperature']:.3f} (each fitted on its own out-of-family predictions).\n")
    (out / "probe_head.md").write_text(text)
    (out / "probe_head.json").write_text(json.dumps({"rows": rows, "by_family": by_family,
                                                     "head": head.meta}, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
