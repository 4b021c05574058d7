"""Training mechanics on a tiny random Llama: packing is exact, loss covers answers only, runs resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tasks import get_task
from zoo.base import load_base
from zoo.store import Zoo
from zoo.train import PackedCollator, answer_loss, build_examples


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_base(str(tiny_base_dir), quant=False)


def test_packed_row_gives_the_same_logits_as_separate_rows(tiny):
    model = tiny.model
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    feats = [{"input_ids": s, "n_prompt": 2} for s in seqs]
    batch = PackedCollator()(feats)
    assert batch["input_ids"].shape == (1, 12)  # no padding at all
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for s in seqs:
            alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(s)], alone, atol=1e-5, rtol=1e-4)
            start += len(s)


def test_loss_is_on_answer_tokens_only(tiny):
    feats = [{"input_ids": [5, 6, 7, 8], "n_prompt": 3}, {"input_ids": [9, 10, 11], "n_prompt": 1}]
    batch = PackedCollator()(feats)
    assert batch["targets"].tolist() == [8, 10, 11]
    assert batch["logits_to_keep"].tolist() == [2, 4, 5]  # the positions that predict those tokens
    with torch.no_grad():
        loss = answer_loss(tiny.model, batch)
        logits = tiny.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[[2, 4, 5]].float(), torch.tensor([8, 10, 11]))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)


def test_examples_use_the_chat_template_and_end_with_eos(tiny, data_dir):
    spec = get_task("sentiment")
    from zoo.data import load_rows

    rows = load_rows(spec, "train", data_dir, limit=4)
    ex = build_examples(spec, tiny.tokenizer, rows, max_len=256, seed=0)
    tok = tiny.tokenizer
    for e, row in zip(ex, rows):
        text = tok.decode(e["input_ids"][e["n_prompt"]:])
        assert text == spec.target(row) + tok.eos_token
        assert "<|im_start|>assistant" in tok.decode(e["input_ids"][: e["n_prompt"]])


def test_long_examples_are_cut_in_the_middle(tiny, data_dir):
    spec = get_task("qa")
    row = {"context": "start " + "filler words here " * 400 + " the end", "question": "Where?",
           "answers": {"text": ["here"], "answer_start": [0]}}
    (ex,) = build_examples(spec, tiny.tokenizer, [row], max_len=200, seed=0)
    assert len(ex["input_ids"]) <= 200
    prompt = tiny.tokenizer.decode(ex["input_ids"][: ex["n_prompt"]])
    assert "start" in prompt and "the end" in prompt and "[...]" in prompt and "Where?" in prompt


def _train_cmd(zoo_dir, base, *extra):
    return [sys.executable, "-m", "zoo", "train", "sentiment", "--zoo", str(zoo_dir), "--base", str(base),
            "--no-quant", "--max-examples", "400", "--batch-size", "2", "--save-steps", "5", "--no-router", *extra]


def test_killed_run_resumes_from_its_checkpoint(tiny_base_dir, zoo_dir, data_dir):
    env = {**os.environ, "ZOO_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(_train_cmd(zoo_dir, tiny_base_dir), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_dir = zoo_dir / ".runs" / "sentiment"
    deadline = time.time() + 120
    while time.time() < deadline and not list(run_dir.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert checkpoints, "no checkpoint was written before the kill"
    assert not (zoo_dir / "adapters" / "sentiment").exists()
    out = subprocess.run(_train_cmd(zoo_dir, tiny_base_dir, "--resume"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout
    entry = Zoo(zoo_dir).get("sentiment")
    assert entry["throughput"]["steps"] < 200  # only the remaining steps ran
    assert (zoo_dir / "adapters" / "sentiment" / "adapter_model.safetensors").exists()
    assert not run_dir.exists()
    log = json.loads((zoo_dir / "adapters" / "sentiment" / "training.json").read_text())["loss_log"]
    assert log and log[-1]["step"] == 200
