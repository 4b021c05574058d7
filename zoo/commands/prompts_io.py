"""Prompts from the command line or from stdin (plain lines, or JSONL objects with a `prompt` field)."""

from __future__ import annotations

import json
import sys

from zoo.errors import ZooError


def read_prompts(prompt: str | None, stdin=None) -> list[str]:
    """The PROMPT argument, or every non-empty stdin line; undecodable bytes become U+FFFD, never a crash."""
    if prompt is not None:
        if not prompt.strip():
            raise ZooError("empty prompt: give some text, or pipe prompts on stdin")
        return [prompt.encode("utf-8", "replace").decode("utf-8")]
    stream = stdin or sys.stdin
    if stream is None or stream.isatty():
        raise ZooError("no prompt: pass PROMPT or pipe prompts on stdin (one per line, or JSONL with 'prompt')")
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    prompts = [parse_line(line) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ZooError("stdin held no prompts")
    return prompts


def parse_line(line: str) -> str:
    if line.lstrip().startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return line
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise ZooError(f"JSONL line without a non-empty 'prompt' string: {line[:80]!r}")
        return obj["prompt"]
    return line
