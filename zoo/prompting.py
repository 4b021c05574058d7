"""Text -> token ids through the base's chat template, cutting over-long passages in the middle."""

from __future__ import annotations

import warnings

MARK = " [...] "


def chat_ids(tokenizer, user_text: str) -> list[int]:
    """The prompt the model sees: the base's own chat template with the assistant turn opened."""
    messages = [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    return tokenizer(user_text + "\n", add_special_tokens=True)["input_ids"]


def cut_middle(text: str, keep_chars: int) -> str:
    """Keep the head and tail of a passage: questions and conclusions usually sit at the ends."""
    if len(text) <= keep_chars:
        return text
    head = keep_chars * 2 // 3
    return text[:head] + MARK + text[len(text) - (keep_chars - head):]


def fit_ids(tokenizer, build, text: str, max_tokens: int, warn: bool = False) -> list[int]:
    """`build(text)` makes the user message; shrink `text` until the chat prompt fits in `max_tokens`."""
    ids = chat_ids(tokenizer, build(text))
    tries = 0
    while len(ids) > max_tokens and tries < 6 and len(text) > 16:
        ratio = max_tokens / len(ids)
        text = cut_middle(text, int(len(text) * ratio * 0.95) - len(MARK))
        ids = chat_ids(tokenizer, build(text))
        tries += 1
    if len(ids) > max_tokens:  # nothing left to cut in the passage: cut the token ids themselves
        half = max_tokens // 2
        ids = ids[:half] + ids[len(ids) - (max_tokens - half):]
    if warn and tries:
        warnings.warn(f"prompt longer than {max_tokens} tokens: cut in the middle of the passage", stacklevel=2)
    return ids


def task_prompt_ids(tokenizer, spec, row: dict, template: int, max_tokens: int) -> list[int]:
    """A task row as prompt ids; an over-long row loses the middle of its `truncate_column`."""
    col = spec.truncate_column
    if col is None:
        return fit_ids(tokenizer, lambda _: spec.prompt(row, template), "", max_tokens)
    return fit_ids(tokenizer, lambda t: spec.prompt({**row, col: t}, template), row[col], max_tokens)


def text_prompt_ids(tokenizer, prompt: str, max_tokens: int) -> list[int]:
    """A free-form prompt; too long, it is cut in the middle, with a warning."""
    return fit_ids(tokenizer, lambda t: t, prompt, max_tokens, warn=True)


def target_ids(tokenizer, answer: str) -> list[int]:
    """The answer tokens followed by end-of-turn, so the adapter learns to stop."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
