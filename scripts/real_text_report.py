"""The hand-labelled real text, summarised: who wrote what, how two readers agree, how often
the steering target is what a reader sees, and how each scorer does on it (grouped by family).
Writes the tables between the ``<!-- real-text:begin/end -->`` markers of docs/evaluation.md.

Run (after scripts/fit_emotion_head.py --out outputs/scorer):
  HF_HUB_OFFLINE=1 .venv/bin/python scripts/real_text_report.py --selection outputs/scorer/selection.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from emoexp.eval.classification import calibration, classification_report
from emoexp.eval.classifiers import LABELS, get_classifier
from emoexp.eval.real_text import kappa, load_labels, load_second, target_agreement
from emoexp.eval.training import FAMILY_GROUPS

BEGIN, END = "<!-- real-text:begin -->", "<!-- real-text:end -->"


def _fam(r: dict) -> str:
    return r["family"] + (" centred" if r.get("centre") else "")


def sources(rows: list[dict]) -> str:
    out = []
    for fam in sorted({_fam(r) for r in rows}):
        rs = [r for r in rows if _fam(r) == fam]
        c = Counter(r["label"] for r in rs)
        out.append({"source": fam, "n": len(rs), **{lab: c.get(lab, 0) for lab in LABELS},
                    "degenerate": f"{np.mean([r['degenerate'] for r in rs]):.0%}"})
    return pd.DataFrame(out).to_markdown(index=False)


def readers(rows: list[dict]) -> str:
    first = {r["id"]: r for r in rows}
    second = load_second(ids=list(first))
    a = [first[s["id"]] for s in second]
    k = kappa([x["label"] for x in a], [s["label"] for s in second])
    agree = np.mean([x["label"] == s["label"] for x, s in zip(a, second)])
    kd = kappa([str(x["degenerate"]) for x in a], [str(s["degenerate"]) for s in second])
    ds = np.mean([abs(x["strength"] - s["strength"]) for x, s in zip(a, second)])
    fams = Counter(_fam(x) for x in a)
    return (f"{len(second)} texts ({', '.join(f'{f} {n}' for f, n in sorted(fams.items()))}) read again by a second "
            f"reader: the dominant label agrees on {agree:.1%} (Cohen's κ {k:.2f}), the degenerate flag κ {kd:.2f}, "
            f"strength differs by {ds:.2f} on average (0-3 scale).")


def agreement(rows: list[dict]) -> str:
    cells = target_agreement(rows)
    keys = sorted({(c["family"], c["alpha"]) for c in cells})
    out = []
    for fam, a in keys:
        row = {"source": fam, "α": f"{a:g}"}
        tot = [0, 0]
        for e in LABELS[:5]:
            c = next((c for c in cells if (c["family"], c["alpha"], c["target"]) == (fam, a, e)), None)
            row[e] = f"{c['match']}/{c['n']}" if c else "—"
            if c:
                tot[0] += c["match"]
                tot[1] += c["n"]
        row["all"] = f"{tot[0] / tot[1]:.0%}" if tot[1] else "—"
        out.append(row)
    return pd.DataFrame(out).to_markdown(index=False)


def scorers(rows: list[dict], held: tuple[str, ...], backends: list[str]) -> str:
    test = [r for r in rows if FAMILY_GROUPS.get(r["family"], r["family"]) in held]
    y = np.array([LABELS.index(r["label"]) for r in test])
    deg = [i for i, r in enumerate(test) if r["degenerate"] and r["label"] == "neutral"]
    name = f"degenerate→neutral (of {len(deg)})"
    out = []
    for b in backends:
        probs = get_classifier(b).predict([r["text"] for r in test]).probs
        rep = classification_report(y, probs.argmax(1), LABELS)
        out.append({"scorer": b, "n": rep["n"], "macro-F1": rep["macro_f1"], "macro recall": rep["macro_recall"],
                    **{f"{lab} R": rep["per_label"][lab]["recall"] for lab in LABELS},
                    "neutral P": rep["per_label"]["neutral"]["precision"], "ECE": calibration(probs, y)["ece"],
                    name: float(np.mean(probs[deg].argmax(1) == LABELS.index("neutral")))
                    if deg else float("nan")})
    return pd.DataFrame(out).to_markdown(index=False, floatfmt=".2f")


def out_of_family(rows: list[dict], sel: dict) -> str:
    """The chosen recipe's leave-one-family-out predictions, per family, with the share of
    degenerate texts a reader found no emotion in that the scorer also calls neutral."""
    from emoexp.eval.training import grouped_cv, training_data

    head = get_classifier("minilm")
    data = training_data(held_out=tuple(sel["held_out"]), profane="profane" in sel["chosen"]["recipe"])
    cv = grouped_cv(data, normalise=head.meta["normalise"], style=head.meta["style"],
                    balanced=head.meta["balanced"], l2=head.meta["l2"])
    byid = {r["id"]: r for r in rows}
    out = []
    for fam, rep in cv["by_family"].items():
        deg = [i for i, r in byid.items() if FAMILY_GROUPS.get(r["family"], r["family"]) == fam and r["degenerate"]
               and r["label"] == "neutral" and i in cv["pred"]]
        out.append({"family (texts never seen in training)": fam, "n": rep["n"], "macro-F1": rep["macro_f1"],
                    "macro recall": rep["macro_recall"],
                    **{f"{lab} R": rep["per_label"][lab]["recall"] if rep["per_label"][lab]["support"] else None
                       for lab in LABELS},
                    "degenerate→neutral": f"{np.mean([cv['pred'][i] == LABELS.index('neutral') for i in deg]):.2f} "
                                          f"of {len(deg)}" if deg else "—"})
    return pd.DataFrame(out).to_markdown(index=False, floatfmt=".2f", missingval="—")


def candidates(sel: dict) -> str:
    out = []
    for r in sel["candidates"]:
        out.append({"recipe": r["recipe"], "L2": f"{r['l2']:g}", "macro-F1": r["macro_f1"],
                    "macro recall": r["macro_recall"],
                    **{lab: r[f"recall_{lab}"] for lab in LABELS}})
    return pd.DataFrame(out).to_markdown(index=False, floatfmt=".2f", disable_numparse=[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--selection", default="outputs/scorer/selection.json")
    p.add_argument("--docs", default="docs/evaluation.md")
    p.add_argument("--backends", default="minilm,minilm-written,minilm-zeroshot,minilm-ensemble")
    a = p.parse_args()
    rows = load_labels()
    sel = json.loads(Path(a.selection).read_text())
    held = tuple(sel["held_out"])
    pool = Counter(r["label"] for r in rows if FAMILY_GROUPS.get(r["family"], r["family"]) not in held)
    md = "\n".join([
        BEGIN, "", "**The labelled set** (label counts per source; `scripts/sample_for_labelling.py`):", "",
        sources(rows), "", readers(rows), "",
        ("**Steered target = reader's label?** (steered texts with an emotion target; k/n per target; the authors' "
        "Qwen2.5 runs and emoexp's SmolLM2 and Gemma 3 default jobs):"), "", agreement(rows), "",
        f"**Choosing the scorer**: leave-one-family-out over the families other than {', '.join(held)} "
        f"({sum(pool.values())} labelled texts: " + ", ".join(f"{k} {v}" for k, v in sorted(pool.items())) +
        "); macro-F1 (the criterion) and recall pooled over their out-of-family predictions:", "", candidates(sel), "",
        (f"Chosen: **{sel['chosen']['recipe']}**, L2 {sel['chosen']['l2']:g}. "
        f"**Reported on the held-out family** ({', '.join(held)}, {len(held) and sel['held_out_report']['n']} "
        "texts no scorer was fitted or chosen on), R = recall, P = precision:"), "", scorers(rows, held, a.backends.split(",")),
        "", ("The chosen recipe on each other family, predicted by a head fitted without that family (the "
        "cross-validation's own predictions):"), "", out_of_family(rows, sel),
        "", END])
    doc = Path(a.docs)
    text = doc.read_text(encoding="utf-8")
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: md, text, flags=re.DOTALL) if BEGIN in text \
        else text + "\n" + md + "\n"
    doc.write_text(text, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
