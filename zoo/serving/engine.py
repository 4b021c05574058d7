"""Step-level decoding for continuous batching: rows join a running batch after their prefill and leave when done.

`Runtime.generate` answers a fixed set of prompts; a server gets requests at any time, so here a batch is a list of
`Row`s and one left-padded KV cache (`zoo.serving.kvcache`). Joining prefills the new prompts (all but their last
token, shared prefix once, as the runtime does) and lays the kept rows and the new ones out again, flush right,
trimming the left padding to the longest row; leaving lays out the rows that stay. Each `step` feeds every row's
next token through the model once (rows of different adapters together: PEFT's `adapter_names`) and returns the
logits. The engine knows nothing of HTTP or threads: `zoo.api.scheduler` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.base import unwrap_peft

ROOM = 64  # decode steps reserved in the cache at each layout (it doubles when a row outgrows it)


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens: greedy at temperature 0, else temperature and nucleus (top-p) sampling."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Row:
    """One request in the batch: its prompt, adapter and sampler, the tokens it produced and the text sent so far."""

    def __init__(self, prompt_ids: list[int], adapter: str, sampling: Sampling, eos: set[int], tag=None):
        import torch

        self.prompt_ids, self.adapter, self.sampling, self.eos, self.tag = prompt_ids, adapter, sampling, eos, tag
        self.tokens: list[int] = []
        self.next_token = prompt_ids[-1]  # fed by the first step; the rest of the prompt is prefilled
        self.length = 0  # tokens of this row in the cache
        self.sent = 0  # characters of the answer already handed out
        self.finish_reason: str | None = None
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator()
            if sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(sampling.seed)

    def accept(self, token: int, decode) -> str:
        """Add a sampled token; return the new text that is safe to send: never part of a stop string, nor half
        of a character still being spelled out byte by byte."""
        self.tokens.append(token)
        self.next_token = token
        text = decode(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.sampling.stop) if i >= 0), default=None)
        if token in self.eos or cut is not None:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.sampling.max_tokens:
            self.finish_reason = "length"
        if cut is not None:
            text = text[:cut]
        safe = len(text)
        if self.finish_reason is None:
            safe -= max((len(s) for s in self.sampling.stop), default=1) - 1
            if text.endswith("\ufffd"):
                safe = min(safe, len(text) - 1)
        delta = text[self.sent:max(safe, self.sent)]
        self.sent += len(delta)
        return delta


class Batch:
    """The running rows and their KV cache, on `runtime`'s model. Call under `runtime.lock` in inference mode."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.rows: list[Row] = []
        self.cache = None

    def relayout(self, keep: list[Row], joining: list[Row]) -> None:
        """Make the batch `keep` (rows already in it) followed by `joining` (prefilled here)."""
        from zoo.serving.kvcache import left_padded_cache

        index = {id(row): i for i, row in enumerate(self.rows)}
        parts = [self._row_cache(index[id(row)], row.length) for row in keep] + self._prefill(joining)
        self.rows = list(keep) + list(joining)
        room = min(ROOM, max((r.sampling.max_tokens - len(r.tokens) for r in self.rows), default=0)) + 1
        self.cache = left_padded_cache(parts, room) if self.rows else None

    def _row_cache(self, i: int, length: int) -> list[tuple]:
        """Row `i`'s own keys and values per model layer, without its left padding."""
        width = self.cache.layers[0].keys.shape[-2]
        return [(layer.keys[i:i + 1, :, width - length:], layer.values[i:i + 1, :, width - length:])
                for layer in self.cache.layers]

    def _prefill(self, rows: list[Row]) -> list[list[tuple]]:
        """The cache of every prompt but its last token, per adapter (the runtime's packed prefill)."""
        from zoo.serving.prefill import prefill_rows

        out: dict[int, list[tuple]] = {}
        for name in dict.fromkeys(r.adapter for r in rows):
            group = [r for r in rows if r.adapter == name and len(r.prompt_ids) > 1]
            if group:
                got = self.runtime.with_adapters([name], lambda model, extra: prefill_rows(
                    unwrap_peft(model).get_decoder(), [r.prompt_ids[:-1] for r in group], self.runtime.loaded.device))
                out.update({id(r): kv for r, kv in zip(group, got)})
        for r in rows:
            r.length = len(r.prompt_ids) - 1
        return [out.get(id(r)) or self._empty_cache() for r in rows]

    def _empty_cache(self) -> list[tuple]:
        """No cached tokens (a one-token prompt): zero-length keys and values of the model's shape."""
        import torch

        config = self.runtime.loaded.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        empty = torch.zeros(1, heads, 0, dim, dtype=self.runtime.loaded.compute_dtype,
                            device=self.runtime.loaded.device)
        return [(empty, empty)] * config.num_hidden_layers

    def step(self):
        """Feed every row's next token; return the next-token logits, (rows, vocab) in fp32."""
        import torch

        device = self.runtime.loaded.device
        width = self.cache.layers[0].keys.shape[-2]
        lengths = torch.tensor([r.length for r in self.rows], device=device)
        mask = (torch.arange(width + 1, device=device)[None] >= (width - lengths)[:, None]).long()
        inputs = dict(input_ids=torch.tensor([[r.next_token] for r in self.rows], device=device),
                      attention_mask=mask, position_ids=lengths[:, None], cache=self.cache, use_cache=True,
                      logits_to_keep=1)
        out = self.runtime.with_adapters([r.adapter for r in self.rows],
                                          lambda model, extra: model(**inputs, **extra))
        for r in self.rows:
            r.length += 1
        return out.logits[:, -1].float()


def sample(logits, rows: list[Row]) -> list[int]:
    """One token per row: the argmax at temperature 0 (as `generate` picks greedily), else a draw from the
    temperature-scaled distribution cut to its top-p nucleus, with the row's own seeded generator."""
    import torch

    greedy = logits.argmax(-1).tolist()
    out = []
    for i, row in enumerate(rows):
        s = row.sampling
        if s.temperature == 0:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / s.temperature, dim=-1)
        if s.top_p < 1:
            ordered, order = probs.sort(descending=True)
            drop = ordered.cumsum(0) - ordered >= s.top_p  # keep the smallest head whose mass reaches top_p
            probs = probs.scatter(0, order[drop], 0.0)
        out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return out
