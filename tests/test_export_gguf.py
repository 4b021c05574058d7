"""`zoo export gguf`: llama.cpp LoRA adapter GGUFs read back with `gguf` and checked against the embedded base's own
Q4_1 GGUF (keys, tensor names, shapes, the q/k row order), against llama.cpp's own converter when its source is
cached, and loaded by llama.cpp itself when llama-cpp-python is built (`make llama-check` builds both)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_adapter
from zoo.cli import main
from zoo.export.gguf import gguf_base, permute_rows, read_base_gguf
from zoo.store import Zoo

gguf = pytest.importorskip("gguf")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
READ_BY_LLAMA_CPP = ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")


def fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def export(zoo_root: Path, out: Path, *extra: str) -> int:
    return main(["export", "gguf", "--all", "--out", str(out), "--zoo", str(zoo_root), *extra])


@pytest.fixture(scope="module")
def real_zoo(tmp_path_factory, embedded_base_dir) -> Path:
    """Random adapters on the embedded base: `sentiment` in the built-in task's shape (r=16, alpha 32, all linear
    modules of the top 20 layers), `rs` a small rsLoRA one."""
    root = tmp_path_factory.mktemp("gguf-zoo") / "zoo"
    zoo = Zoo(root)
    make_adapter(zoo, embedded_base_dir, "sentiment", "sentiment", 0, r=16, lora_alpha=32,
                 target_modules=ALL_LINEAR, layers_to_transform=list(range(10, 30)))
    make_adapter(zoo, embedded_base_dir, "rs", "qa", 1, r=4, lora_alpha=8, use_rslora=True,
                 target_modules=["q_proj", "k_proj", "v_proj"])
    return root


@pytest.fixture(scope="module")
def exported(real_zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf-out") / "export"
    assert export(real_zoo, out) == 0
    return out


def test_adapter_gguf_has_llama_cpps_keys_and_fits_the_base_gguf(exported):
    from tasks import get_task

    path = exported / "adapters" / "sentiment.gguf"
    kv = fields(path)
    assert (kv["general.architecture"], kv["general.type"], kv["adapter.type"]) == ("llama", "adapter", "lora")
    assert kv["adapter.lora.alpha"] == 32.0
    assert kv["adapter.lora.task_name"] == "sentiment"
    assert kv["adapter.lora.prompt_prefix"] == get_task("sentiment").templates[0]
    _, base = read_base_gguf(gguf_base(None).gguf)
    got = tensors(path)
    assert len(got) == 2 * len(ALL_LINEAR) * 20
    for name, t in got.items():
        target, part = name.rsplit(".", 1)
        ne = list(base[target])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(x) for x in t.shape] == ([ne[0], 16] if part == "lora_a" else [16, ne[1]]), name
    assert {n.split(".")[1] for n in got} == {str(i) for i in range(10, 30)}


def test_qk_rows_follow_the_base_gguf_and_the_delta_is_the_peft_delta(exported, real_zoo, embedded_base_dir):
    """The base GGUF's q/k weights are the safetensors' rows permuted (llama.cpp's rotary layout): the exported
    lora_b must be permuted the same way, and B @ A must be PEFT's delta (in that row order)."""
    from safetensors.torch import load_file

    from zoo.export.gguf import GgufBase

    base = gguf_base(None)
    weights = load_file(Path(embedded_base_dir) / "model.safetensors")
    base_tensors = tensors(base.gguf)
    adapter = load_file(Path(real_zoo) / "adapters" / "sentiment" / "adapter_model.safetensors")
    got = tensors(exported / "adapters" / "sentiment.gguf")
    for proj, kind, heads in (("q_proj", "attn_q", base.n_head), ("k_proj", "attn_k", base.n_kv_head),
                              ("v_proj", "attn_v", None)):
        hf = weights[f"model.layers.29.self_attn.{proj}.weight"].numpy()
        t = base_tensors[f"blk.29.{kind}.weight"]
        in_gguf = gguf.quants.dequantize(t.data, t.tensor_type).reshape(hf.shape)
        permuted = permute_rows(hf, heads) if heads else hf
        assert np.abs(in_gguf - permuted).max() < 1e-6
        if heads:
            assert np.abs(in_gguf - hf).max() > 0.01  # the permutation is not the identity here
        key = f"base_model.model.model.layers.29.self_attn.{proj}"
        delta = (adapter[key + ".lora_B.weight"] @ adapter[key + ".lora_A.weight"]).numpy()
        a, b = (np.asarray(got[f"blk.29.{kind}.weight.lora_{x}"].data) for x in "ab")
        assert np.allclose(b @ a, permute_rows(delta, heads) if heads else delta, atol=1e-5)
    assert isinstance(base, GgufBase) and (base.n_head, base.n_kv_head) == (9, 3)


def test_rslora_alpha_and_f16_tensors(real_zoo, tmp_path):
    """llama.cpp scales by alpha / r; an rsLoRA adapter (alpha / sqrt(r)) gets the alpha that gives its scale."""
    out = tmp_path / "f16"
    assert export(real_zoo, out, "--outtype", "f16") == 0
    kv = fields(out / "adapters" / "rs.gguf")
    assert math.isclose(kv["adapter.lora.alpha"] / 4, 8 / math.sqrt(4), rel_tol=1e-6)
    assert {t.tensor_type for t in tensors(out / "adapters" / "rs.gguf").values()} == {gguf.GGMLQuantizationType.F16}


def test_routes_and_launch_script_give_each_adapter_its_lora_id(exported):
    routes = json.loads((exported / "routes.json").read_text())
    assert routes["engine"] == "llama-server" and routes["base"]["gguf"] == str(gguf_base(None).gguf)
    ids = {n: a["lora_id"] for n, a in routes["adapters"].items()}
    assert sorted(ids.values()) == list(range(len(ids)))
    script = (exported / "launch_llama_server.sh").read_text()
    loras = [word for word in script.split() if word.startswith("adapters/")]
    assert len(loras) == 1  # one comma-separated --lora: llama.cpp keeps only the last of repeated ones
    assert loras[0].split(",") == [routes["adapters"][n]["path"] for n in sorted(ids, key=ids.get)]
    assert "--lora-init-without-apply" in script and routes["routes"]["none"] is None
    assert subprocess.run(["bash", "-n", str(exported / "launch_llama_server.sh")]).returncode == 0


def test_same_as_llama_cpps_own_converter(real_zoo, exported, embedded_base_dir, tmp_path):
    from zoo.export.llama_check import converter_dir

    source = converter_dir()
    if source is None:
        pytest.skip("llama.cpp's convert_lora_to_gguf.py is not cached (`make llama-check` downloads its source)")
    ref = tmp_path / "reference.gguf"
    done = subprocess.run([sys.executable, str(source / "convert_lora_to_gguf.py"), "--base", str(embedded_base_dir),
                           "--outfile", str(ref), str(Path(real_zoo) / "adapters" / "sentiment")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    ours, theirs = tensors(exported / "adapters" / "sentiment.gguf"), tensors(ref)
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert (ours[name].tensor_type, list(ours[name].shape)) == (t.tensor_type, list(t.shape)), name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(t.data)), name
    mine, reference = fields(exported / "adapters" / "sentiment.gguf"), fields(ref)
    assert {k: mine[k] for k in READ_BY_LLAMA_CPP} == {k: reference[k] for k in READ_BY_LLAMA_CPP}


def test_llama_cpp_itself_loads_the_adapter_and_it_changes_the_answer(exported):
    from zoo.export.llama_check import venv_ready, venv_python
    from zoo.export.llama_parity import llama_answers, llama_run

    if not venv_ready():
        pytest.skip("llama-cpp-python is not built here (`make llama-check` builds and caches it)")
    from transformers import AutoTokenizer

    from zoo.base import resolve_base
    from zoo.prompting import chat_ids

    base = gguf_base(None)
    tok = AutoTokenizer.from_pretrained(resolve_base("smollm2-135m").path)
    prompts = [chat_ids(tok, "Is this review positive or negative? A warm, funny film.")]
    with_adapter, _ = llama_answers(venv_python(), base.gguf, exported / "adapters" / "sentiment.gguf", prompts, 4, [])
    without, _ = llama_answers(venv_python(), base.gguf, None, prompts, 4, [])
    assert len(with_adapter[0]) == 4 and with_adapter != without
    # the first step's logits of given tokens: the base's own greedy pick scores at least as high as the adapter's
    picks = [without[0][0], with_adapter[0][0]]
    run = llama_run(venv_python(), base.gguf, None, prompts, 1, [], candidates=[picks])
    assert run["answers"] == [without[0][:1]] and len(run["first_logits"][0]) == 2
    assert run["first_logits"][0][0] >= run["first_logits"][0][1]


def test_merged_gguf_is_the_expanded_base_plus_the_peft_delta(real_zoo, exported, tmp_path):
    """`--merged`: every weight of the base GGUF dequantized to --outtype, `alpha / r * B @ A` added where the
    adapter applies (in llama.cpp's q/k row order, as in the adapter GGUF), the base's metadata kept."""
    out = tmp_path / "merged"
    assert main(["export", "gguf", "sentiment", "--merged", "--outtype", "f16", "--out", str(out),
                 "--zoo", str(real_zoo)]) == 0
    routes = json.loads((out / "routes.json").read_text())
    assert routes["adapters"]["sentiment"]["merged"] == "merged/sentiment.gguf"
    merged_file, base_file = gguf.GGUFReader(out / "merged" / "sentiment.gguf"), gguf.GGUFReader(gguf_base(None).gguf)
    merged, base = ({t.name: t for t in f.tensors} for f in (merged_file, base_file))
    assert set(merged) == set(base)
    lora = tensors(exported / "adapters" / "sentiment.gguf")
    for name in ("blk.29.attn_q.weight", "blk.9.attn_q.weight", "blk.12.ffn_down.weight", "output_norm.weight"):
        t = base[name]
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(merged[name].data.shape)
        if name + ".lora_a" in lora:
            a, b = (np.asarray(lora[f"{name}.lora_{x}"].data, dtype=np.float32) for x in "ab")
            assert np.abs(b @ a).max() > 0.05  # the adapter changes this weight visibly
            want = want + 32 / 16 * (b @ a)
        got = np.asarray(merged[name].data, dtype=np.float32)
        assert np.allclose(got, want, atol=2e-3, rtol=1e-3), name
    assert merged["blk.12.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert merged["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    kept, was = merged_file.fields, base_file.fields
    assert kept["general.name"].contents() == "sentiment"
    assert kept["general.architecture"].contents() == "llama"
    for key in ("tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.attention.head_count_kv"):
        assert kept[key].contents() == was[key].contents(), key


def test_merged_gguf_answers_like_base_plus_adapter_in_llama_cpp(real_zoo, exported, tmp_path):
    """In llama.cpp itself: the merged file (no LoRA at run time) and the f32-expanded base + the adapter GGUF give
    the same greedy tokens, and differ from the base alone."""
    from zoo.export.gguf_full import expand_base, write_full_gguf
    from zoo.export.llama_check import venv_ready, venv_python
    from zoo.export.llama_parity import llama_answers

    if not venv_ready():
        pytest.skip("llama-cpp-python is not built here (`make llama-check` builds and caches it)")
    out = tmp_path / "merged"
    assert main(["export", "gguf", "sentiment", "--merged", "--out", str(out), "--zoo", str(real_zoo)]) == 0
    expanded = tmp_path / "base-f32.gguf"
    assert write_full_gguf(expand_base(gguf_base(None).gguf), expanded) == []
    prompts = [[1, 9690, 198, 2683, 314, 260, 1341, 30], [1, 4093, 28, 1431, 346, 17]]
    folded, _ = llama_answers(venv_python(), out / "merged" / "sentiment.gguf", None, prompts, 6, [])
    applied, _ = llama_answers(venv_python(), expanded, exported / "adapters" / "sentiment.gguf", prompts, 6, [])
    alone, _ = llama_answers(venv_python(), expanded, None, prompts, 6, [])
    assert folded == applied and folded != alone


def test_bad_base_gguf_and_foreign_out_folder_are_refused(real_zoo, exported, tmp_path, capsys):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf at all")
    assert export(real_zoo, tmp_path / "a", "--base-gguf", str(not_gguf)) == 2
    assert "not a readable model GGUF" in capsys.readouterr().err
    assert export(real_zoo, tmp_path / "b", "--base-gguf", str(exported / "adapters" / "rs.gguf")) == 2
    assert "not a model" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert export(real_zoo, mine) == 2
    assert (mine / "notes.txt").read_text() == "keep me"


def test_adapter_that_does_not_fit_the_base_gguf_is_refused(tmp_path, tiny_base_dir, capsys):
    """A tiny Llama's adapter against the embedded base's GGUF: refused before llama.cpp would be."""
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "tiny", "qa", 0)
    gguf_file = gguf_base(None).gguf
    assert export(zoo.root, tmp_path / "out", "--base-gguf", str(gguf_file)) == 2
    assert "does not fit the base GGUF" in capsys.readouterr().err
    assert export(zoo.root, tmp_path / "out2") == 0  # no GGUF known for a local base: written, unchecked
    assert json.loads((tmp_path / "out2" / "routes.json").read_text())["base"]["gguf"] is None
    assert export(zoo.root, tmp_path / "out3", "--merged") == 2  # nothing to fold the adapter into
    assert "pass it with --base-gguf" in capsys.readouterr().err and not (tmp_path / "out3").exists()


def test_a_first_token_miss_is_reported_with_pefts_logit_lead():
    """llama-check: for each prompt where llama.cpp's first token is not PEFT's, the table shows how far PEFT's
    token led llama.cpp's in PEFT's logits (near-ties are flips of rounding, large leads a broken export)."""
    import torch

    from zoo.export.llama_parity import Parity, miss_gaps, table

    side = {"logits": [torch.tensor([0.0, 2.0, 1.75]), torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])],
            "first": [1, 0, 1]}
    llama = [[2, 5], [0, 1], [1]]  # prompt 0 missed (PEFT 1 vs llama.cpp 2), the others agree
    assert miss_gaps(side, llama) == [0.25]
    row = table([Parity("qa", "qa", 3, 2 / 3, 1 / 3, 1 / 3, 0.0, 0.0, [0.25, 0.0625], "f1", 50, 40, 49, 1.0, 2.0,
                        base_top1=1.0, tie_bound=0.1, adapter_margin_error=0.12, top1_outside_ties=2 / 3)])
    assert "| 0.062, 0.250 |" in row and row.splitlines()[1].count("---") == row.splitlines()[2].count("|") - 1
    assert "| 66.7% | 0.100 / 0.120 | 100.0% |" in row


def test_only_misses_beyond_llama_cpps_measured_margin_error_count_against_the_bar():
    """The tie bound is the 95th percentile of llama.cpp's margin errors between PEFT's two best tokens; a miss
    where PEFT led by no more than it is a tie, a larger lead (or no answer at all) is a miss."""
    import torch

    from zoo.export.llama_parity import margin_errors, quantile, share_outside_ties, top_two

    logits = [torch.tensor([0.0, 2.0, 1.5, -1.0]), torch.tensor([4.0, 0.0, 1.0, 3.0])]
    pairs = top_two(logits)
    assert pairs == [[1, 2], [0, 3]]
    # llama.cpp's margins: 0.3 (PEFT's 0.5) and 1.5 (PEFT's 1.0)
    assert margin_errors(logits, pairs, [[1.9, 1.6], [3.5, 2.0]]) == pytest.approx([0.2, 0.5])
    assert quantile([float(i) for i in range(101)]) == pytest.approx(95.0)
    side = {"logits": [torch.tensor([0.0, 2.0, 1.9]), torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])],
            "first": [1, 0, 1]}
    tie, decisive, agree, empty = [2], [1], [1], []  # PEFT led llama.cpp's token by 0.1 and by 3.0
    assert share_outside_ties(side, [tie, [0], agree], bound=0.15) == 1.0
    assert share_outside_ties(side, [tie, decisive, agree], bound=0.15) == pytest.approx(2 / 3)
    assert share_outside_ties(side, [tie, [0], agree], bound=0.05) == pytest.approx(2 / 3)
    assert share_outside_ties(side, [tie, [0], empty], bound=0.15) == pytest.approx(2 / 3)


def test_llama_check_fails_on_each_bar_and_passes_near_ties():
    """The check's verdict: raw misses that are ties pass; a decisive miss rate over 5%, a tie bound over 1 logit
    (llama.cpp reading the base unlike PEFT) or whole answers apart on the f32 base each fail."""
    from dataclasses import replace

    from zoo.export.llama_check import failures
    from zoo.export.llama_parity import Parity

    ok = Parity("qa", "qa", 64, 60 / 64, 0.9, 0.7, 0.6, 0.05, [0.02, 0.07, 0.09, 0.19], "f1", 57, 54, 63, 1.0, 2.0,
                top1_f32=1.0, same_answers_f32=1.0, base_top1=1.0, tie_bound=0.25, adapter_margin_error=0.3,
                top1_outside_ties=1.0)
    assert failures([ok]) == []
    assert "outside ties" in failures([replace(ok, top1_outside_ties=0.9)])[0]
    assert "margin error on the base" in failures([replace(ok, tie_bound=1.5)])[0]
    assert "f32 base" in failures([replace(ok, same_answers_f32=0.5)])[0]
    assert len(failures([replace(ok, tie_bound=float("nan"), same_answers_f32=float("nan"))])) == 2


def test_the_llama_cpp_wheel_is_cached_per_cpu_instruction_set(tmp_path, monkeypatch):
    """GGML_NATIVE compiles for the CPU it builds on (a wheel from a machine with AVX512 dies with SIGILL on one
    without): the cache key and the venv's stamp follow the instruction sets and build flags, not other flags."""
    from zoo.export import llama_check

    avx2 = "processor : 0\nflags : fpu sse2 avx avx2 fma f16c ht\n"
    assert llama_check.build_key(avx2) == llama_check.build_key(avx2.replace(" ht", " ht constant_tsc"))
    assert llama_check.build_key(avx2) != llama_check.build_key(avx2.replace("f16c", "f16c avx512f avx512_bf16"))
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_NATIVE=OFF")
    native_off = llama_check.build_key(avx2)
    monkeypatch.delenv("CMAKE_ARGS")
    assert native_off != llama_check.build_key(avx2)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".build").write_text("another machine's key")
    assert not llama_check.venv_ready(venv)  # rebuilt from this CPU's wheel, not probed


def test_the_small_zoo_trains_alone_for_ci_to_share(tmp_path, monkeypatch):
    """`--train-zoo DIR` trains what the check trains when given no zoo (every built-in task, 256 examples, no
    router), into DIR, and stops there: .ci/run shares it between the vLLM and llama.cpp checks."""
    from zoo import cli
    from zoo.export import llama_check

    calls = []
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(llama_check, "ensure_venv", lambda: pytest.fail("training alone builds no llama.cpp"))
    assert llama_check.main(["--train-zoo", str(tmp_path / "zoo")]) == 0
    assert calls == [["train", "--all", "--max-examples", "256", "--no-router", "--zoo", str(tmp_path / "zoo")]]
    monkeypatch.setattr(cli, "main", lambda argv: 1)
    assert llama_check.main(["--train-zoo", str(tmp_path / "zoo")]) == 1
