"""MiniLM through onnxruntime: the router's latency is MiniLM's, and onnxruntime runs it about twice as fast as
torch on one core (docs/router.md), giving the same vectors within float rounding (a router fitted through one
backend routes the same through the other). The model is exported once into the cache; torch stays the fallback.

`ZOO_EMBED_BACKEND=torch` keeps MiniLM in torch (`onnx`, the default, takes onnxruntime when it is installed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

from zoo.errors import ZooError

BACKEND_ENV = "ZOO_EMBED_BACKEND"
BACKENDS = ("onnx", "torch")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def wanted() -> bool:
    """Whether MiniLM should run in onnxruntime: asked for (the default) and installed, with onnx to export it."""
    choice = os.environ.get(BACKEND_ENV, "onnx")
    if choice not in BACKENDS:
        raise ZooError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {choice[:40]!r}")
    return choice == "onnx" and all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))


class OnnxEncoder:
    """Last hidden states of MiniLM from its ONNX export, one session per thread count (torch's setting, which
    the router's latency measurement sets to one)."""

    def __init__(self, onnx_file: Path):
        self.onnx_file = onnx_file
        self._sessions: dict[int, object] = {}
        self._session(1)  # a broken file fails here, not at the first prompt

    def _session(self, threads: int):
        import onnxruntime as ort

        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy cores in a server
            self._sessions[threads] = ort.InferenceSession(str(self.onnx_file), options,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def hidden(self, encoded: dict, threads: int):
        """(batch, tokens, 384) float32 array for the tokenizer's torch tensors."""
        feed = {name: encoded[name].numpy() for name in INPUTS}
        return self._session(threads).run(None, feed)[0]


def encoder(model_dir: Path) -> OnnxEncoder | None:
    """The ONNX encoder of the model in `model_dir`, exported on first use; None (torch then embeds, with a
    note) when it cannot be had."""
    onnx_file = None
    try:
        onnx_file = exported(model_dir)
        return OnnxEncoder(onnx_file)
    except Exception as e:  # noqa: BLE001 - any failure of an optional speed-up leaves the torch path
        if onnx_file is not None:
            onnx_file.unlink(missing_ok=True)  # a file that does not load is exported again next time
        print(f"[zoo] router: MiniLM runs in torch ({type(e).__name__}: {str(e)[:120]})", file=sys.stderr,
              flush=True)  # stderr: `zoo route --json` prints JSON lines on stdout
        return None


def exported(model_dir: Path) -> Path:
    """MiniLM exported to ONNX in the cache, keyed by its weights and the exporter; written atomically under a
    lock, so concurrent processes export it once and never read half a file."""
    import torch

    from zoo.base import cache_dir, fingerprint
    from zoo.fsutil import file_lock

    key = hashlib.sha256(f"{fingerprint(model_dir)}:{torch.__version__}:{OPSET}".encode()).hexdigest()[:16]
    target = cache_dir() / "router" / f"minilm-{key}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        if not target.is_file():
            partial = target.with_suffix(f".{os.getpid()}.part")
            print(f"[zoo] router: exporting MiniLM to ONNX once ({target})", file=sys.stderr, flush=True)
            try:
                _export(model_dir, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return target


def _export(model_dir: Path, out: Path) -> None:
    """Trace a fresh copy of the model (tracing leaves the module it traced changed: the live one must not be)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    sample = AutoTokenizer.from_pretrained(model_dir)(["a short one", "and a longer second sentence"],
                                                      padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(model), tuple(sample[name] for name in INPUTS), str(out), dynamo=False,
                          input_names=list(INPUTS), output_names=["hidden"], dynamic_axes=axes,
                          opset_version=OPSET)
