"""`zoo export vllm`: every vLLM loader rule refused with its name before vLLM could load (or silently ignore) an
adapter; a good zoo exported with the base's Hub id, launch scripts and the route mapping `zoo serve --upstream`
reads. Tiny random adapters on the tiny Llama; the real vLLM run is `make vllm-check` (zoo.export.vllm_check)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import make_adapter, send_json
from zoo.cli import main
from zoo.export.rules import LLAMA_LIKE, MAX_LORA_RANKS, smallest_rank_choice, vllm_problems
from zoo.export.vllm import vllm_args
from zoo.manifest import BlendInfo
from zoo.store import Zoo

HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
PLAIN = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}


def rules(cfg: dict, arch: str | None = "LlamaForCausalLM", **kw) -> list[str]:
    return [b.rule for b in vllm_problems(cfg, arch, **kw)]


@pytest.mark.parametrize("cfg, rule", [
    ({"r": 16, "target_modules": ["q_proj"]}, "required-fields"),
    ({**PLAIN, "modules_to_save": ["score"]}, "no-modules-to-save"),
    ({**PLAIN, "use_dora": True}, "no-dora"),
    ({**PLAIN, "rank_pattern": {"q_proj": 600}}, "rank"),
    ({**PLAIN, "lora_bias": True}, "no-bias"),
    ({**PLAIN, "init_lora_weights": "pissa"}, "plain-init"),
    ({**PLAIN, "r": 600}, "rank"),
    ({**PLAIN, "target_modules": ["q_proj", "lm_head"]}, "no-embeddings"),
    ({**PLAIN, "target_modules": ["embed_tokens"]}, "no-embeddings"),
    ({**PLAIN, "target_modules": ["q_proj", "dense_4h_to_h"]}, "supported-modules"),
    ({**PLAIN, "target_modules": "q_proj|v_proj"}, "target-modules"),
])
def test_each_vllm_rule_is_named(cfg, rule):
    assert rules(cfg) == [rule]


def test_plain_lora_on_a_llama_passes_and_an_unknown_architecture_is_refused():
    assert rules(PLAIN) == []
    assert rules({**PLAIN, "target_modules": list(LLAMA_LIKE)}) == []
    assert rules(PLAIN, arch="GPTNeoXForCausalLM") == ["architecture"]


def test_rank_limits_follow_vllms_max_lora_rank_choices():
    assert MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert [smallest_rank_choice(r) for r in (1, 4, 16, 24, 48, 300, 512, 513)] == [1, 8, 16, 32, 64, 320, 512, None]
    assert rules({**PLAIN, "r": 24}, max_rank=16) == ["rank"]
    assert rules({**PLAIN, "r": 24}, max_rank=32) == []
    broken = vllm_problems({**PLAIN, "r": 48}, "LlamaForCausalLM", max_rank=16, blend_method="cat")
    assert "cat" in broken[0].fix and "--method svd --svd-rank 16" in broken[0].fix


# the command, on tiny adapters ---------------------------------------------------------------------------------
@pytest.fixture
def hub_base(tmp_path, tiny_base_dir):
    """The tiny Llama as the embedded base's conversion leaves it: a local folder whose zoo_base.json names its
    Hub id."""
    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    (base / "zoo_base.json").write_text(json.dumps({"hub_id": HUB}))
    return base


def export(zoo: Zoo, out, *extra: str) -> int:
    return main(["export", "vllm", "--out", str(out), "--zoo", str(zoo.root), *extra])


def test_a_good_zoo_is_exported_with_the_hub_id_scripts_and_routes(tmp_path, hub_base, capsys):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "sentiment", "sentiment", 0, r=8, lora_alpha=16)
    make_adapter(zoo, hub_base, "qa", "qa", 1, r=16, lora_alpha=32,
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    out = tmp_path / "out"
    assert export(zoo, out, "--all") == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "launch_vllm.sh" in printed and "routes.json" in printed
    for name in ("sentiment", "qa"):
        cfg = json.loads((out / "adapters" / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == HUB  # never the local folder the adapter was trained from
        assert (out / "adapters" / name / "adapter_model.safetensors").read_bytes() == \
            (zoo.adapter_dir(name) / "adapter_model.safetensors").read_bytes()
    routes = json.loads((out / "routes.json").read_text())
    assert routes["routes"] == {"qa": "qa", "sentiment": "sentiment", "none": HUB}
    assert routes["max_lora_rank"] == 16
    sglang = json.loads((out / "routes_sglang.json").read_text())
    assert sglang["routes"] == {"qa": f"{HUB}:qa", "sentiment": f"{HUB}:sentiment", "none": HUB}
    assert routes["base"] == HUB and routes["adapters"] == ["qa", "sentiment"]  # as `zoo serve --upstream` reads it
    assert sorted(Zoo(out).healthy()) == ["qa", "sentiment"]  # the export is itself a zoo (for the router)
    script = (out / "launch_vllm.sh").read_text()
    assert f"vllm serve \"$BASE\"" in script and "--max-lora-rank 16 --max-loras 2" in script
    assert "'{\"name\":\"qa\",\"path\":\"adapters/qa\",\"base_model_name\":\"" + HUB + "\"}'" in script
    assert "python}\" -m vllm.entrypoints.openai.api_server" in script and "--dtype float32" in script
    assert "VLLM_CPU_KVCACHE_SPACE" in script and str(tmp_path) not in script
    sglang = (out / "launch_sglang.sh").read_text()
    assert "sglang.launch_server" in sglang and "--lora-paths qa=adapters/qa sentiment=adapters/sentiment" in sglang


def test_the_launch_script_parses_and_matches_the_engine_arguments(tmp_path, hub_base):
    import subprocess

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "qa", "qa", 1)
    out = tmp_path / "out"
    assert export(zoo, out, "qa") == 0
    for script in ("launch_vllm.sh", "launch_sglang.sh"):
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0
    routes = json.loads((out / "routes.json").read_text())
    args = vllm_args(routes, cpu=True)
    assert args[args.index("--max-lora-rank") + 1] == "8"  # rank 4 -> the smallest choice holding it
    assert json.loads(args[args.index("--lora-modules") + 1]) == {"name": "qa", "path": "adapters/qa",
                                                                   "base_model_name": HUB}


def lora_only(path) -> None:
    """Keep only the LoRA matrices (PEFT also saves the full tied embedding when lm_head is a target)."""
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(path).items() if ".lora_" in k}, path)


@pytest.mark.parametrize("lora, extra, rule", [
    ({"target_modules": ["q_proj", "lm_head"]}, (), "rule no-embeddings"),
    ({"use_dora": True}, (), "rule no-dora"),
    ({"r": 24, "lora_alpha": 24}, ("--max-lora-rank", "16"), "rule rank"),
])
def test_an_adapter_breaking_a_rule_is_refused_before_vllm_sees_it(tmp_path, hub_base, capsys, lora, extra, rule):
    """vLLM would serve the plain base for modules it does not wrap (#55193): the export refuses instead."""
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "bad", "qa", 0, **lora)
    lora_only(zoo.adapter_dir("bad") / "adapter_model.safetensors")
    assert zoo.healthy() == ["bad"]  # the zoo itself would serve it
    out = tmp_path / "out"
    assert export(zoo, out, "bad", *extra) == 2
    err = capsys.readouterr().err
    assert rule in err and "bad:" in err and "Traceback" not in err
    assert not out.exists()


def test_a_cat_blend_over_the_rank_is_refused_with_svd_suggested(tmp_path, hub_base, capsys):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "multi", "qa", 0, r=48, lora_alpha=48)
    zoo.put(zoo.get("multi").with_(kind="combined", blend=BlendInfo(("a", "b", "c"), (1, 1, 1), "cat")))
    assert export(zoo, tmp_path / "out", "multi", "--max-lora-rank", "32") == 2
    err = capsys.readouterr().err
    assert "rule rank" in err and "`cat` blend" in err and "--method svd --svd-rank 32" in err


def test_a_local_base_without_a_hub_id_is_refused_unless_named(tmp_path, tiny_base_dir, capsys):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "qa", "qa", 0)
    assert export(zoo, tmp_path / "out", "qa") == 2
    assert "rule hub-id" in capsys.readouterr().err
    assert export(zoo, tmp_path / "out", "qa", "--base-id", "org/tiny") == 0
    cfg = json.loads((tmp_path / "out" / "adapters" / "qa" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "org/tiny"


def test_an_output_folder_of_the_users_is_never_replaced(tmp_path, hub_base, capsys):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "qa", "qa", 0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert export(zoo, mine, "qa") == 2
    assert (mine / "notes.txt").read_text() == "keep"
    out = tmp_path / "out"
    assert export(zoo, out, "qa") == 0 and export(zoo, out, "qa") == 0  # its own output: replaced


# talking to vLLM (zoo.export.vllm_serving), against a stand-in OpenAI server on a real socket ---------------------
@pytest.fixture
def engine():
    """A minimal OpenAI-shaped server: lists a base and two adapters (one with the wrong parent), echoes the model
    name in completions, counts chat tokens."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, obj, status=200):
            send_json(self, status, obj)

        def do_GET(self):
            self._send({"data": [{"id": HUB, "parent": None}, {"id": "qa", "parent": HUB},
                                 {"id": "odd", "parent": "other"}, {"id": "mute", "parent": HUB}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["model"] == "down":
                return self._send({"error": {"message": "no"}}, 404)
            if self.path.endswith("/chat/completions"):
                return self._send({"usage": {"completion_tokens": body["max_tokens"]}})
            self._send({"choices": [{"text": f"{body['model']}:{body['prompt']}"}],
                        "usage": {"completion_tokens": 0 if body["model"] == "mute" else 2}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_listing_problems_name_missing_and_misparented_adapters(engine):
    from zoo.export.vllm_serving import listing_problems

    routes = {"base": HUB, "adapters": ["qa", "odd", "gone", "mute"]}
    assert listing_problems(engine, routes) == ["adapter 'odd' is listed with parent 'other', not " + repr(HUB),
                                                "adapter 'gone' is not listed by vLLM",
                                                "adapter 'mute' generated nothing"]


def test_completions_keep_order_and_errors_are_clear(engine):
    from zoo.errors import ZooError
    from zoo.export.vllm_serving import chat_tokens_per_s, complete_all

    assert complete_all(engine, "qa", [[1, 2], "b", [3]], 4, concurrency=3) == ["qa:[1, 2]", "qa:b", "qa:[3]"]
    with pytest.raises(ZooError, match="404"):
        complete_all(engine, "down", ["x"], 4)
    timing = chat_tokens_per_s(engine, "qa", ["a"] * 5, max_tokens=48, concurrency=5)
    assert timing["completion_tokens"] == 240 and timing["requests"] == 5 and timing["tokens_per_s"] > 0


def test_a_vllm_that_dies_at_start_is_reported_with_its_log(tmp_path, hub_base, monkeypatch):
    from zoo.errors import ZooError
    from zoo.export.vllm_serving import start_vllm

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "qa", "qa", 0)
    assert export(zoo, tmp_path / "out", "qa") == 0
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the logs kept after a failed start land here
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no such engine here' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ZooError, match="exited with code 3(.|\n)*no such engine here"):
        with start_vllm(tmp_path / "out", base_dir=hub_base, python=fake, timeout=60):
            pass
    monkeypatch.chdir(tmp_path)  # a relative VLLM_PYTHON (as make passes it) names a file here, not in the export
    monkeypatch.setenv("VLLM_PYTHON", "python")
    with pytest.raises(ZooError, match="exited with code 3"):
        with start_vllm(tmp_path / "out", base_dir=hub_base, timeout=60):
            pass
    monkeypatch.setenv("VLLM_PYTHON", "missing/python")
    with pytest.raises(ZooError, match="no vLLM install at"):
        with start_vllm(tmp_path / "out", base_dir=hub_base, timeout=60):
            pass


def test_the_parity_table_goes_between_the_markers_and_keeps_the_prose(tmp_path):
    from zoo.export.vllm_check import BEGIN, END, write_doc

    doc = tmp_path / "vllm.md"
    doc.write_text(f"# Title\n\nprose\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    rows = [{"adapter": "qa", "metric": "f1", "n": 100, "ours": 35.31, "vllm": 33.0, "change_95": [-4.1, -0.5],
             "identical": 61}]
    facts = {"when": "now", "zoo": "zoo z", "seconds": 12.0, "load": "1.0/1.0/1.0", "bench": None}
    write_doc(doc, rows, facts)
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose") and text.endswith(f"{END}\n\nafter\n") and "old" not in text
    assert "| qa (f1) | 100 | 35.3 | 33.0 | [-4.1, -0.5] | 61/100 |" in text


def test_the_check_uses_a_zoo_that_has_the_built_in_adapters(tmp_path, hub_base):
    from zoo.export.vllm_check import BUILT_IN, pick_zoo

    zoo = Zoo(tmp_path / "zoo")
    for seed, task in enumerate(BUILT_IN):
        make_adapter(zoo, hub_base, f"my-{task}", task, seed)
    picked, trained = pick_zoo(zoo.root, tmp_path / "work")
    assert picked.root == zoo.root and not trained and not (tmp_path / "work").exists()


def test_adapters_of_two_bases_are_not_exported_together(tmp_path, hub_base, tiny_base_dir, capsys):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, hub_base, "qa", "qa", 0)
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))  # another base's fingerprint
    make_adapter(zoo, other, "sentiment", "sentiment", 1)
    assert export(zoo, tmp_path / "out", "--all") == 2
    assert "rule one-base" in capsys.readouterr().err
