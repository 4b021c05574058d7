"""Surface changes people make to the same request: quotes, speaker names, short excerpts, typos, register.

Shared by both prompt generators (`router.phrasings` for training, `router.heldout` for evaluation): these
functions change the look of an input, not the words of a request, so sharing them leaks no wording. Each
generator brings its own name lists, quote marks and request wording.
"""

from __future__ import annotations

import random
import re

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_SPEAKER = re.compile(r"#Person(\d+)#")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(" ".join(text.split())) if s]


def excerpt(text: str, rng: random.Random, must_contain: str | None = None, most: int = 3) -> str:
    """One to `most` consecutive sentences of `text`, the one holding `must_contain` among them (an
    extractive question stays answerable); the whole text when it is that short already."""
    parts = sentences(text)
    if len(parts) <= 1:
        return text.strip()
    hit = next((i for i, s in enumerate(parts) if must_contain and must_contain in s), None)
    k = rng.randint(1, min(most, len(parts)))
    lo = rng.randint(0, len(parts) - k) if hit is None else rng.randint(max(0, hit - k + 1), min(hit, len(parts) - k))
    return " ".join(parts[lo:lo + k])


def rename_speakers(dialogue: str, names: list[str], rng: random.Random, sep: str = ": ") -> str:
    """`#Person1#: hi` -> `Maria: hi`: people paste chats with real names (or roles), not DialogSum's markers."""
    cast = rng.sample(names, k=min(len(names), 1 + max((int(n) for n in _SPEAKER.findall(dialogue)), default=1)))
    lines = []
    for line in dialogue.splitlines():
        m = re.match(r"#Person(\d+)#:\s*", line)
        lines.append(f"{cast[(int(m.group(1)) - 1) % len(cast)]}{sep}{line[m.end():]}" if m else line)
    text = "\n".join(lines)
    return _SPEAKER.sub(lambda m: cast[(int(m.group(1)) - 1) % len(cast)], text)  # mentions inside turns


def first_turns(dialogue: str, rng: random.Random, fewest: int = 2) -> str:
    """The opening turns of a chat: short pastes are as common as whole transcripts."""
    lines = [x for x in dialogue.splitlines() if x.strip()]
    if len(lines) <= fewest:
        return dialogue
    return "\n".join(lines[:rng.randint(fewest, len(lines))])


def quote(text: str, marks: tuple[str, str]) -> str:
    return f"{marks[0]}{text}{marks[1]}"


def typos(text: str, rng: random.Random, rate: float = 0.08) -> str:
    """Swap, drop or double a letter in about `rate` of the words longer than three letters."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < rate:
            j = rng.randrange(1, len(w) - 1)
            op = rng.randrange(3)
            words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if op == 0 else
                        w[:j] + w[j + 1:] if op == 1 else w[:j] + w[j] + w[j:])
    return " ".join(words)


def casual(text: str) -> str:
    """Lower case, no closing period: how a request typed in a hurry looks."""
    return text.lower().rstrip(".")
