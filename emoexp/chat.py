"""``emoexp chat``: an interactive chat with live emotion weights.

Commands inside the chat::

    /set anger=1 joy=0.5     set the weights (replaces all; mixes allowed; 'base' too)
    /add fear=0.5            change some weights, keep the others
    /clear                   no steering
    /show                    print the weights, site, layers and the last relative dose
    /reset                   forget the conversation
    /quit                    leave

Example:
    emoexp chat outputs/run/latest/evs.safetensors --model smollm2 --weights 'joy=1'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonargparse.typing import PositiveInt

from .vocab import Positions, Site

__all__ = ["Args", "ChatSession", "main"]

HELP = __doc__.split("Commands inside the chat::")[1].split("Example:")[0]


@dataclass
class Args:
    """``emoexp chat``: an interactive chat whose emotion weights change live."""

    vectors: str = field(default="", metadata={"positional": None, "help": "EV safetensors file"})
    model: str = "smollm2"
    """Model spec (smollm2, a folder or a hub id); it must be the vectors' model."""
    site: Site | None = None
    """Site to steer (default: the vectors' own)."""
    layers: list[int] | None = None
    """Layers to steer (default: all)."""
    positions: Positions = "all"
    """Steered positions."""
    max_new_tokens: PositiveInt = 80
    """New tokens per reply."""
    weights: str = ""
    """Initial weights, e.g. 'joy=1 anger=-0.5'."""
    trust_remote_code: bool = False
    """Run the model repository's own code."""
    allow_foreign_vectors: bool = False
    """Steer with vectors extracted from another model (same shapes)."""


def parse_weights(text: str) -> dict[str, float]:
    """``"anger=1 joy=0.5"`` (or comma-separated) -> {"anger": 1.0, "joy": 0.5}."""
    from .config import parse_target

    parts = [p for p in text.replace(",", " ").split() if p]
    out: dict[str, float] = {}
    for p in parts:
        if "=" not in p:
            raise ValueError(f"expected emotion=weight, got {p!r}")
        out.update(parse_target(p))
    return out


class ChatSession:
    """A conversation with a steered model; plain PyTorch, no Fabric."""

    def __init__(self, model: Any, tok: Any, evs: Any, *, site: str, layers: list[int] | None,
                 positions: str, max_new_tokens: int):
        self.model, self.tok, self.evs = model, tok, evs
        self.site, self.layers, self.positions = site, layers, positions
        self.max_new_tokens = max_new_tokens
        self.weights: dict[str, float] = {}
        self.history: list[dict[str, str]] = []
        self.last_dose: float | None = None

    def command(self, line: str) -> str:
        """Apply a ``/command`` and return the message to show."""
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "/set":
            self.weights = parse_weights(rest)
        elif cmd == "/add":
            self.weights.update(parse_weights(rest))
        elif cmd == "/clear":
            self.weights = {}
        elif cmd == "/reset":
            self.history = []
            return "conversation cleared"
        elif cmd != "/show":
            return f"unknown command {cmd}; commands:{HELP}"
        for name in self.weights:
            self.evs.combine({name: 1.0})  # unknown emotions fail here, before generation
        dose = f", last relative dose {self.last_dose:.3f}" if self.last_dose is not None else ""
        shown = ", ".join(f"{k}={v:g}" for k, v in self.weights.items()) or "none (unsteered)"
        return f"weights: {shown}; site {self.site}, layers {self.layers or 'all'}, positions {self.positions}{dose}"

    def reply(self, text: str) -> str:
        """Generate the assistant's reply to ``text`` under the current weights."""
        from .generation import generate
        from .prompts import conversation_prompt, encode_prompts, line_break_ids, uses_chat_template
        from .steering import steer

        self.history.append({"role": "user", "content": text})
        ids = encode_prompts(self.tok, [conversation_prompt(self.tok, self.history)])
        stops = [] if uses_chat_template(self.tok) else line_break_ids(self.tok)  # a base model's reply: one line
        if self.weights:
            with steer(self.model, self.evs.combine(self.weights), layers=self.layers, site=self.site,
                       positions=self.positions, record_dose=True) as s:
                out = generate(self.model, self.tok, ids, max_new_tokens=self.max_new_tokens, stop_ids=stops)[0]
            doses = s.doses()
            self.last_dose = sum(doses.values()) / len(doses) if doses else None
        else:
            out = generate(self.model, self.tok, ids, max_new_tokens=self.max_new_tokens, stop_ids=stops)[0]
        self.history.append({"role": "assistant", "content": out.text})
        return out.text


def loop(session: ChatSession, lines: Iterable[str], write: Callable[[str], Any]) -> None:
    """Read lines until /quit or end of input; commands start with '/'."""
    write("emoexp chat — /set anger=1 joy=0.5, /clear, /show, /reset, /quit\n> ")
    for line in lines:
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if not line:
            write("> ")
            continue
        try:
            msg = session.command(line) if line.startswith("/") else session.reply(line)
        except (KeyError, ValueError) as e:
            msg = f"error: {e}"
        write(msg + "\n> ")
    write("\n")


def main(args: Args) -> int:
    from .models import inspect_model, load_model
    from .vectors import EmotionVectors, check_compatible

    evs = EmotionVectors.load(args.vectors)
    check_compatible(evs, inspect_model(args.model, trust_remote_code=args.trust_remote_code),
                     allow_foreign=args.allow_foreign_vectors, path=args.vectors)  # before the weights load
    model, tok = load_model(args.model, trust_remote_code=args.trust_remote_code)
    session = ChatSession(model, tok, evs, site=args.site or evs.metadata.get("site", "residual"), layers=args.layers,
                          positions=args.positions, max_new_tokens=args.max_new_tokens)
    if args.weights:
        print(session.command(f"/set {args.weights}"))
    loop(session, sys.stdin, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    return 0
