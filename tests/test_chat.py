"""emoexp chat: live weights steer the replies; bad commands are reported, not fatal."""

from __future__ import annotations

import torch

from emoexp import EmotionVectors, find_layers
from emoexp.chat import ChatSession, loop, parse_weights
from emoexp.models import load_model


def test_parse_weights():
    assert parse_weights("anger=1 joy=0.5") == {"anger": 1.0, "joy": 0.5}
    assert parse_weights("joy=1,fear=-2") == {"joy": 1.0, "fear": -2.0}


def test_chat_session_steers_and_survives_bad_input():
    model, tok = load_model("tiny-random-llama")
    n, h = len(find_layers(model)), model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    evs = EmotionVectors({e: torch.randn(n, h, generator=g) * 4 for e in ("joy", "anger")}, {"site": "residual"})
    s = ChatSession(model, tok, evs, site="residual", layers=None, positions="all", max_new_tokens=6)
    out: list[str] = []
    loop(s, ["Hello there", "/set joy=2 anger=-1", "/show", "/reset", "Hello there", "/set rage=1", "/quit",
             "never read"], out.append)
    text = "".join(out)
    assert "weights: joy=2, anger=-1; site residual" in text
    assert "error: unknown emotion 'rage'" in text
    replies = [m for m in out[1:] if m.endswith("\n> ") and not m.startswith(("weights", "error", "conversation"))]
    assert len(replies) == 2
    plain, steered = replies[0], replies[-1]
    assert plain != steered  # same history (reset), different weights, different reply
    assert s.last_dose is not None and s.last_dose > 0
    assert all(not m._forward_hooks for m in model.modules())
