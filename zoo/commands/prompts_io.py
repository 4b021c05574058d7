"""Prompts from the command line or from stdin (plain lines, or JSONL objects with a `prompt` field), shared by
`zoo route` and `zoo generate`."""

from __future__ import annotations

import json
import sys

from zoo.errors import ZooError


def read_prompts(prompt: str | None, stdin=None) -> list[str]:
    """The PROMPT argument, or every non-empty stdin line; undecodable bytes become U+FFFD, never a crash."""
    if prompt is not None:
        return [check_prompt(prompt.encode("utf-8", "replace").decode("utf-8"), "PROMPT")]
    stream = stdin or sys.stdin
    if stream is None or stream.isatty():
        raise ZooError('no prompt: pass "PROMPT" or pipe prompts on stdin (one per line, or JSONL with "prompt")')
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    prompts = [parse_line(line, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not prompts:
        raise ZooError("empty prompt: stdin holds no text")
    return prompts


def check_prompt(prompt: str, where: str) -> str:
    if not prompt.strip():
        raise ZooError(f"empty prompt ({where}): give some text")
    return prompt


def parse_line(line: str, n: int) -> str:
    """A JSONL object gives its `prompt` field; any other line (a brace that is not JSON too) is the prompt."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            return line
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ZooError(f"stdin line {n}: a JSON object needs a string 'prompt' field")
        return check_prompt(obj["prompt"], f"stdin line {n}")
    return line
