"""Test helpers shared by several test modules."""

import torch
from peft import LoraConfig, get_peft_model

from zoo.base import resolve_base
from zoo.manifest import BaseInfo, Entry
from zoo.store import Zoo


def make_adapter(zoo: Zoo, base_dir, name: str, task: str, seed: int, **lora) -> None:
    """A random LoRA adapter (init_lora_weights=False, B scaled up so it matters) registered as if trained."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **settings))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    peft_model.save_pretrained(zoo.adapter_dir(name))
    ref = resolve_base(str(base_dir))
    zoo.put(Entry(name=name, task=task, kind="trained", base=BaseInfo(str(base_dir), ref.hash, False),
                  lora={"r": settings["r"], "alpha": settings["lora_alpha"]}, path=f"adapters/{name}"))


def memory_levels(release) -> tuple[int, int, int]:
    """(RSS bytes, live tensors, live Python objects) after `release()`: the tensor count is the exact leak check,
    RSS only a coarse one (glibc's per-thread arenas step up by tens of MB at random with nothing leaking)."""
    import gc

    import psutil

    release()
    objects = gc.get_objects()
    tensors = sum(isinstance(o, torch.Tensor) for o in objects)
    return psutil.Process().memory_info().rss, tensors, len(objects)


def entry(name: str, task: str = "qa", kind: str = "trained", **fields) -> Entry:
    """A minimal manifest entry (no adapter files behind it unless the test writes them)."""
    return Entry(name=name, task=task, kind=kind, base=fields.pop("base", BaseInfo()), lora=fields.pop("lora", {}),
                 path=f"adapters/{name}", **fields)


SERVE_TASKS = {"sst": "sentiment", "squad": "qa", "dsum": "summarization"}  # the served tiny zoo: adapter -> task
SERVE_PROMPTS = {  # the router's test prompts, by the adapter `auto` must pick
    "sst": "Is the following sentence positive or negative?\nA gorgeous, moving film.",
    "dsum": "Dialogue:\n#Person1#: Are you coming tonight?\n#Person2#: Yes, at eight.\n\nSummary:",
    "squad": "Context:\nThe Eiffel Tower was built in 1889 by Gustave Eiffel's company.\n\nQ: When was the tower "
             "built?\nA (short span from the context):",
    "base": "Write a poem about the sea at night.",
}


def send_json(handler, status: int, obj) -> None:
    """Answer a `BaseHTTPRequestHandler` request with `obj` as JSON (the tests' fake servers)."""
    import json

    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
