"""Does fine-tuning MiniLM end to end beat the default head (a softmax on frozen MiniLM embeddings)?

An experiment, not the shipped scorer: the same data and text normalisation as the default
head's recipe (written, intense and profane replies + the labelled real text, normalised), the
same leave-one-family-out folds (the written replies always train; Qwen2.5 never enters), then
one fit on every training family reported on the held-out Qwen2.5 texts. all-MiniLM-L6-v2
(22M parameters) with mean pooling and a linear layer over six labels, every weight trained:
AdamW, learning rate 5e-5 (the new layer 1e-3), 3 epochs, batch 16, 128 tokens, seed 0, fixed in
advance (nothing is tuned, so the folds measure the recipe and Qwen2.5 stays unseen).

Run: .venv/bin/python scripts/finetune_scorer.py --out outputs/finetune-scorer   (35-60 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from emoexp.eval.classification import calibration, classification_report
from emoexp.eval.classifiers import LABELS
from emoexp.eval.encoders import minilm_path
from emoexp.eval.normalise import normalise
from emoexp.eval.real_text import load_labels
from emoexp.eval.training import FAMILY_GROUPS, training_data

HELD_OUT = "qwen2.5"
LR, HEAD_LR, EPOCHS, BATCH, MAX_LEN, SEED = 5e-5, 1e-3, 3, 16, 128, 0


class Classifier(torch.nn.Module):
    """MiniLM, mean pooling over real tokens, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(minilm_path())
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))


def _batches(tok, texts: list[str], order: np.ndarray):
    for i in range(0, len(order), BATCH):
        idx = order[i:i + BATCH]
        enc = tok([texts[k] for k in idx], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        yield idx, enc


def fit_predict(tok, train_x: list[str], train_y: list[int], test_x: list[str], tag: str) -> np.ndarray:
    """Fine-tune a fresh model on the training texts; the test texts' logits."""
    torch.manual_seed(SEED)
    model = Classifier()
    opt = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": LR},
                             {"params": model.head.parameters(), "lr": HEAD_LR}], weight_decay=0.01)
    steps = EPOCHS * -(-len(train_x) // BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    y = torch.tensor(train_y)
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    model.train()
    for epoch in range(EPOCHS):
        total = 0.0
        for idx, enc in _batches(tok, train_x, rng.permutation(len(train_x))):
            loss = torch.nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"  {tag}: epoch {epoch + 1} loss {total / len(train_x):.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    out = np.zeros((len(test_x), len(LABELS)))
    with torch.inference_mode():
        for idx, enc in _batches(tok, test_x, np.arange(len(test_x))):
            out[idx] = model(enc["input_ids"], enc["attention_mask"]).numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/finetune-scorer")
    p.add_argument("--folds", default=None, help="comma-separated families to leave out in turn (default: every "
                   "training family; '' for none)")
    p.add_argument("--folds_only", action="store_true", help="skip the held-out report")
    a = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    data = training_data(held_out=(HELD_OUT,))
    texts = [normalise(t) for t in data.texts]
    y = np.array([LABELS.index(lab) for lab in data.labels])
    groups = np.array(data.groups)
    families = sorted(set(data.groups) - {"written"})
    if a.folds is not None:
        families = [f for f in a.folds.split(",") if f]
    logits = np.zeros((len(y), len(LABELS)))
    for fam in families:
        te, tr = np.flatnonzero(groups == fam), np.flatnonzero(groups != fam)
        logits[te] = fit_predict(tok, [texts[k] for k in tr], list(y[tr]), [texts[k] for k in te], f"without {fam}")
        rep = classification_report(y[te], logits[te].argmax(1), LABELS)
        print(f"{fam}: macro-F1 {rep['macro_f1']:.3f} macro recall {rep['macro_recall']:.3f}", flush=True)
    real = np.isin(groups, families)
    pred = logits.argmax(1)
    result = {"recipe": {"lr": LR, "head_lr": HEAD_LR, "epochs": EPOCHS, "batch": BATCH, "max_len": MAX_LEN,
                         "seed": SEED, "text": "normalised"},
              "folds": families,
              "by_family": {f: classification_report(y[groups == f], pred[groups == f], LABELS) for f in families}}
    if families:
        result["grouped_cv"] = classification_report(y[real], pred[real], LABELS)
        print(f"leave-one-family-out pooled ({', '.join(families)}): macro-F1 {result['grouped_cv']['macro_f1']:.3f} "
              f"macro recall {result['grouped_cv']['macro_recall']:.3f}", flush=True)
    if not a.folds_only:
        test = [r for r in load_labels() if FAMILY_GROUPS.get(r["family"], r["family"]) == HELD_OUT]
        z = fit_predict(tok, texts, list(y), [normalise(r["text"]) for r in test], "all training families")
        yt = np.array([LABELS.index(r["label"]) for r in test])
        rep = classification_report(yt, z.argmax(1), LABELS)
        z64 = torch.from_numpy(z)
        rep["ece_uncalibrated"] = calibration(torch.softmax(z64, -1).numpy(), yt)["ece"]
        result["held_out"] = rep
        print(f"held out ({HELD_OUT}, {len(test)} texts): macro-F1 {rep['macro_f1']:.3f} "
              f"macro recall {rep['macro_recall']:.3f} "
              + " ".join(f"{k} {v['recall']:.2f}" for k, v in rep["per_label"].items()), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
