"""Text as the emotion scorer reads it: emoji named, loops shortened, markup dropped.

Steered model output is not tidy prose. MiniLM's vocabulary has no emoji (😡 and 🤬 become
``[UNK]``), its tokenizer lowercases (capitals are lost) and a loop of one phrase fills its 256
word pieces with a single sentence. :func:`normalise` gives the scorer the same words a reader
sees: each emoji replaced by its CLDR name (the ``emoji`` package: 😡 → "enraged face"), a run of
one emoji or one phrase kept twice, markdown emphasis removed. :func:`style_features` keeps what
lowercasing loses: the share of capital letters, exclamation marks, emoji and repeated words,
and of swear words (masked ones too: MiniLM splits "f***ing" into pieces that mean nothing).

Example:
    >>> normalise("I'm SO MAD 😡😡😡😡 I can't I can't I can't I can't")
    "I'm SO MAD (enraged face) (enraged face) I can't I can't"
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["STYLE_FEATURES", "normalise", "strip_special", "style_features"]

#: Names of the columns of :func:`style_features`.
STYLE_FEATURES = ("caps", "exclaim", "emoji", "repeat", "swear")

_SPECIAL = re.compile(r"<bos>|<eos>|<pad>|<start_of_turn>(?:model|user)?|<end_of_turn>|<\|[a-z_]{2,30}\|>")
_MARKUP = re.compile(r"\*\*|__|^#+\s*", re.MULTILINE)
# A phrase of 1-80 characters repeated three or more times in a row (with optional separators).
_LOOP = re.compile(r"(.{1,80}?)(?:[\s,.;:!?-]*\1){2,}", re.DOTALL)
_SPACES = re.compile(r"[ \t]+")
# A swear word: a common English one, or a word with letters masked by * or # ("f***ing", "sh*t").
_SWEAR = re.compile(r"\b(?:fuck\w*|shit\w*|damn\w*|goddamn\w*|bastard\w*|bitch\w*|crap\w*|asshole\w*|hell)\b|"
                    r"\b[a-z]+[*#]+[a-z]*\b|\b[a-z][*#]{2,}", re.IGNORECASE)
_SCAN = 4000  # characters looked at: the scorer reads far fewer, and the loop regex stays cheap


def strip_special(text: Any) -> tuple[Any, int]:
    """``text`` without chat special tokens (``<bos>``, ``<end_of_turn>``, ``<|im_end|>``…) and their count."""
    if not isinstance(text, str):
        return text, 0
    cleaned, k = _SPECIAL.subn("", text)
    return cleaned.strip(), k


def _demojize(text: str) -> str:
    try:
        import emoji
    except ImportError as e:
        raise ImportError("the emotion scorer names emoji with the emoji package: pip install 'emoexp[offline]'") from e
    return emoji.demojize(text, delimiters=(" (", ") ")).replace("_", " ")


def _keep_two(m: re.Match) -> str:
    unit = m.group(1)
    return unit if not unit.strip() else f"{unit} {unit.strip()}"


def normalise(text: str) -> str:
    """The text with emoji named, runs of a repeated phrase or emoji cut to two, markdown
    emphasis removed and spaces collapsed (case is kept: :func:`style_features` reads it)."""
    text = _MARKUP.sub("", text[:_SCAN])
    text = _demojize(text)
    text = _LOOP.sub(_keep_two, text)
    return _SPACES.sub(" ", text).strip()


def style_features(texts: list[str]) -> np.ndarray:
    """``[N, 5]`` per text: share of capitals among letters, exclamation marks per word, emoji
    per word, share of words that repeat the word 1-3 places before them, swear words per word
    (each in [0, 1])."""
    out = np.zeros((len(texts), len(STYLE_FEATURES)), dtype=np.float32)
    for i, t in enumerate(texts):
        t = t[:_SCAN]
        letters = [c for c in t if c.isalpha() and c.isascii()]
        words = t.split()
        nw = max(len(words), 1)
        out[i, 0] = sum(c.isupper() for c in letters) / max(len(letters), 1)
        out[i, 1] = min(t.count("!") / nw, 1.0)
        out[i, 2] = min(sum(ord(c) >= 0x1F300 or 0x2600 <= ord(c) < 0x27C0 for c in t) / nw, 1.0)
        low = [w.lower() for w in words]
        out[i, 3] = sum(any(low[j] == low[j - d] for d in (1, 2, 3) if j - d >= 0) for j in range(len(low))) / nw
        out[i, 4] = min(len(_SWEAR.findall(t)) / nw, 1.0)
    return out
