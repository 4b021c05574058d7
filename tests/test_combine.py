"""Weighted combinations: every method builds a usable adapter, lineage is recorded, bad input is refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zoo.cli import main
from zoo.combine import METHODS, Blend
from zoo.combine.search import blend_row, delta_norm, norm_balanced, search
from zoo.errors import ZooError
from zoo.manifest import BaseInfo
from zoo.reports import write_combination_report
from zoo.store import Zoo
from tests.helpers import make_adapter as add_adapter  # tests/test_merge.py imports it from here


def deltas(folder) -> dict[str, torch.Tensor]:
    """scale * B @ A for every adapted module of a saved adapter."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    weights = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, a in weights.items():
        if ".lora_A." in key:
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            out[key.split(".lora_A.")[0]] = (b @ a) * cfg["lora_alpha"] / cfg["r"]
    return out


@pytest.fixture
def zoo(tiny_base_dir, zoo_dir):
    zoo = Zoo(zoo_dir)
    add_adapter(zoo, tiny_base_dir, "sent", "sentiment", seed=1)
    add_adapter(zoo, tiny_base_dir, "qa1", "qa", seed=2)
    return zoo


def cli(zoo, *argv) -> int:
    return main(["combine", *argv, "--zoo", str(zoo.root)])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_builds_a_loadable_adapter_with_lineage(zoo, method):
    extra = ["--density", "0.7"] if method.split("_")[0] in ("ties", "dare", "magnitude") else []
    rc = cli(zoo, "sent", "qa1", "--weights", "0.6", "0.4", "--method", method, "--name", "blend", *extra)
    assert rc == 0
    entry = zoo.get("blend")
    blend = entry.blend
    assert entry.kind == "combined" and blend.parents == ("sent", "qa1") and blend.weights == (0.6, 0.4)
    assert blend.method == method and entry.task == "sentiment" and entry.route_as == ()
    assert blend.density == (0.7 if extra else None) and blend.parent_tasks == {"sent": "sentiment", "qa1": "qa"}
    assert blend.seed == (0 if method.startswith("dare") else None)
    assert entry.base == zoo.get("sent").base
    assert entry.lora["r"] == (8 if method == "cat" else 4)
    folder = zoo.adapter_dir("blend")
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "combination.json", "task.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt")) or (folder / f).is_dir()]  # flat, no pickles
    assert json.loads((folder / "combination.json").read_text())["parents"] == ["sent", "qa1"]
    assert zoo.problems() == []
    d = deltas(folder)
    assert len(d) == 4 and all(torch.isfinite(x).all() and x.abs().sum() > 0 for x in d.values())
    assert not list((zoo.root / ".staging").glob("*"))


@pytest.mark.parametrize("method,extra", [("cat", []), ("svd", ["--svd-rank", "8"])])
def test_exact_methods_reproduce_the_weighted_sum_of_deltas(zoo, method, extra):
    """cat (and svd with enough rank) give w1*dW1 + w2*dW2 exactly on every module."""
    assert cli(zoo, "sent", "qa1", "--weights", "0.6", "-1.5", "--method", method, "--name", "b", *extra) == 0
    d1, d2, d = deltas(zoo.adapter_dir("sent")), deltas(zoo.adapter_dir("qa1")), deltas(zoo.adapter_dir("b"))
    assert d.keys() == d1.keys()
    for k in d:
        torch.testing.assert_close(d[k], 0.6 * d1[k] - 1.5 * d2[k], atol=1e-4, rtol=1e-4)


def test_linear_is_the_product_of_blended_factors(zoo):
    """linear blends A and B separately: (sum sqrt(w s) B)(sum sqrt(w s) A), not the sum of deltas."""
    assert cli(zoo, "sent", "qa1", "--weights", "0.5", "0.5", "--method", "linear", "--name", "lin") == 0
    w1, w2 = (load_file(zoo.adapter_dir(n) / "adapter_model.safetensors") for n in ("sent", "qa1"))
    d = deltas(zoo.adapter_dir("lin"))
    key = next(iter(d))
    f = (0.5 * 2.0) ** 0.5  # sqrt(weight * alpha/r)
    a = f * w1[key + ".lora_A.weight"] + f * w2[key + ".lora_A.weight"]
    b = f * w1[key + ".lora_B.weight"] + f * w2[key + ".lora_B.weight"]
    torch.testing.assert_close(d[key], b @ a, atol=1e-5, rtol=1e-5)


def test_combined_adapter_is_served_by_the_runtime(zoo, tiny_base_dir):
    from zoo.serving.runtime import Runtime

    from tasks import spec_for_adapter

    assert cli(zoo, "sent", "qa1", "--name", "both", "--route-as", "qa", "sentiment") == 0
    entry = zoo.get("both")
    assert entry.task == "qa" and entry.route_as == ("qa", "sentiment") and entry.blend.method == "cat"
    assert entry.blend.weights == (0.5, 0.5)
    assert spec_for_adapter(zoo, "both").name == "qa"  # from its own task.json, as eval and serving read it
    rt = Runtime(zoo, base=str(tiny_base_dir), quant=False)
    out = {n: rt.generate(["hello there"], adapter=n, max_new_tokens=6)[0]["answer"] for n in ("none", "both")}
    assert out["none"] != out["both"]
    assert "both" in rt.available()
    rt.close()


def test_temporary_blend_lives_only_inside_its_block(zoo, tiny_base_dir):
    """`Runtime.temporary_adapter(blend=...)`: served like any adapter inside the block, gone after it (an error
    included), and it never takes a name that is in use."""
    from zoo.serving.runtime import Runtime

    with Runtime(zoo, base=str(tiny_base_dir), quant=False) as rt:
        alone = rt.generate(["hello there"], adapter="sent", max_new_tokens=6)[0]["answer"]
        with rt.temporary_adapter(blend=Blend(("sent", "qa1"), (1.0, 0.0), "cat"), name="tmp") as name:
            assert name == "tmp" and "tmp" in rt.adapters
            assert rt.generate(["hello there"], adapter=name, max_new_tokens=6)[0]["answer"] == alone
        assert rt.adapters == ["qa1", "sent"]
        with pytest.raises(RuntimeError, match="inside"):
            with rt.temporary_adapter(blend=Blend(("sent", "qa1"), (0.5, 0.5), "svd"), name="tmp"):
                raise RuntimeError("inside")
        assert rt.adapters == ["qa1", "sent"]
        with pytest.raises(ZooError, match="exists already"):
            rt.temporary_adapter(blend=Blend(("sent", "qa1"), (0.5, 0.5)), name="sent")
        with pytest.raises(ZooError, match="exactly one"):
            rt.temporary_adapter(name="x")
        assert set(zoo.entries()) == {"sent", "qa1"}


def test_temporary_adapter_from_a_folder(zoo, tiny_base_dir, tmp_path):
    """A PEFT folder outside the zoo answers as the same adapter from the zoo would; a damaged one is refused."""
    import shutil

    from zoo.serving.runtime import Runtime

    folder = tmp_path / "outside"
    shutil.copytree(zoo.adapter_dir("sent"), folder)
    with Runtime(zoo, base=str(tiny_base_dir), quant=False) as rt:
        with rt.temporary_adapter(folder=folder, name="visitor") as name:
            answer = rt.generate(["hello there"], adapter=name, max_new_tokens=6)[0]["answer"]
        assert rt.adapters == []
        assert answer == rt.generate(["hello there"], adapter="sent", max_new_tokens=6)[0]["answer"]
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:50])
        with pytest.raises(ZooError, match="cannot load"):
            rt.temporary_adapter(folder=folder, name="visitor")


def test_different_ranks_need_cat_or_svd(zoo, tiny_base_dir):
    add_adapter(zoo, tiny_base_dir, "r8", "summarization", seed=3, r=8, lora_alpha=16)
    for method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        with pytest.raises(ZooError, match="use --method cat .* or --method svd"):
            from zoo.combine import combine
            combine(zoo, Blend(("sent", "r8"), (0.5, 0.5), method), "x")
    assert cli(zoo, "sent", "r8", "--method", "cat", "--name", "c") == 0
    assert zoo.get("c").lora["r"] == 12
    assert cli(zoo, "sent", "r8", "--method", "svd", "--name", "s") == 0
    assert zoo.get("s").lora["r"] == 8
    assert cli(zoo, "sent", "r8", "--method", "linear", "--name", "l") == 2
    assert "l" not in zoo.entries() and not zoo.adapter_dir("l").exists()


@pytest.mark.parametrize("lora,refusal,reason", [
    ({"use_dora": True}, "cannot combine 'odd'", "DoRA"),
    ({"use_rslora": True}, "cannot combine 'odd'", "rsLoRA"),
    # trained biases: the zoo's health check (zoo.adapter_config) refuses them before combine looks
    ({"bias": "lora_only"}, "adapter 'odd' is damaged", "bias"),
    ({"lora_bias": True}, "adapter 'odd' is damaged", "lora_bias"),
])
def test_features_peft_gets_wrong_are_refused(zoo, tiny_base_dir, capsys, lora, refusal, reason):
    add_adapter(zoo, tiny_base_dir, "odd", "qa", seed=4, **lora)
    assert cli(zoo, "sent", "odd", "--name", "x") == 2
    err = capsys.readouterr().err
    assert refusal in err and reason in err
    assert "x" not in zoo.entries() and not zoo.adapter_dir("x").exists()


def test_layer_layouts(zoo, tiny_base_dir):
    """A parent covering the others' layers goes first; disjoint layouts are refused."""
    add_adapter(zoo, tiny_base_dir, "top", "qa", seed=5, layers_to_transform=[1])
    add_adapter(zoo, tiny_base_dir, "bottom", "qa", seed=6, layers_to_transform=[0])
    assert cli(zoo, "top", "sent", "--weights", "0.3", "0.7", "--name", "cover") == 0
    entry = zoo.get("cover")
    assert entry.blend.parents == ("sent", "top") and entry.blend.weights == (0.7, 0.3)
    d, d_sent, d_top = (deltas(zoo.adapter_dir(n)) for n in ("cover", "sent", "top"))
    for k in d:
        torch.testing.assert_close(d[k], 0.7 * d_sent[k] + 0.3 * d_top.get(k, 0), atol=1e-4, rtol=1e-4)
    assert cli(zoo, "top", "bottom", "--name", "disjoint") == 2


def test_bad_input_is_refused_and_nothing_is_overwritten(zoo, tiny_base_dir, capsys, tmp_path):
    assert cli(zoo, "sent", "qa1", "--name", "keep") == 0
    before = (zoo.adapter_dir("keep") / "adapter_model.safetensors").read_bytes()
    manifest = zoo.manifest_path.read_text()
    cases = {
        "unknown": (["sent", "nope", "--name", "y"], "no adapter named 'nope'"),
        "weights": (["sent", "qa1", "--weights", "1", "--name", "y"], "1 weights for 2 adapters"),
        "exists": (["qa1", "sent", "--name", "keep"], "already exists"),
        "badname": (["sent", "qa1", "--name", "../../x"], "invalid adapter name"),
        "parent": (["sent", "qa1", "--name", "sent", "--force"], "one of the adapters being combined"),
        "twice": (["sent", "sent", "--name", "y"], "listed twice"),
        "density": (["sent", "qa1", "--method", "cat", "--density", "0.5", "--name", "y"], "--density applies"),
        "task": (["sent", "qa1", "--route-as", "nosuchtask", "--name", "y"], "nosuchtask"),
        "one": (["sent", "--name", "y"], "two or more"),
    }
    for case, (argv, message) in cases.items():
        assert cli(zoo, *argv) == 2, case
        assert message in capsys.readouterr().err, case
    assert (zoo.adapter_dir("keep") / "adapter_model.safetensors").read_bytes() == before
    assert zoo.manifest_path.read_text() == manifest
    assert not (tmp_path / "x").exists() and not (zoo.root.parent / "x").exists()
    # another base: same architecture, different weights
    zoo.put(zoo.get("qa1").with_(name="alien", base=BaseInfo(str(tiny_base_dir), "sha256:00")))
    import shutil
    shutil.copytree(zoo.adapter_dir("qa1"), zoo.adapter_dir("alien"))
    assert cli(zoo, "sent", "alien", "--name", "y") == 2
    assert "different bases" in capsys.readouterr().err
    # --force replaces
    assert cli(zoo, "qa1", "sent", "--name", "keep", "--force", "--method", "svd") == 0
    assert zoo.get("keep").blend.parents == ("qa1", "sent") and zoo.get("keep").blend.method == "svd"


def test_search_picks_the_best_blend_and_writes_the_report(zoo, monkeypatch, capsys):
    """The grid is scored per task against each task's own adapter; the best mean fraction is kept."""
    import zoo.evaluation as evaluation

    calls = []

    def fake_score(runtime, adapter, spec, n, data_dir=None, seed=0):
        calls.append((adapter, spec.name))
        # own adapters score 0.8 / 50; blends are told apart by their own deltas (the first LoRA B entry)
        if adapter in ("sent", "qa1"):
            return {"accuracy": 0.8} if spec.name == "sentiment" else {"f1": 50.0, "exact_match": 40.0}
        layer = runtime.model.base_model.model.model.layers[0].self_attn.q_proj
        x = float(layer.lora_B[adapter].weight.abs().sum())
        return {"accuracy": 0.8 / (1 + x)} if spec.name == "sentiment" else {"f1": 50.0 * x / (1 + x)}

    monkeypatch.setattr(evaluation, "evaluate_adapter_on_task", fake_score)
    rc = cli(zoo, "sent", "qa1", "--search", "--method", "cat", "linear", "-n", "3", "--name", "best",
             "--no-quant")
    assert rc == 0, capsys.readouterr().err
    report = json.loads((zoo.reports_dir / "combinations.json").read_text())["blends"]
    assert len(report) == 12  # 2 methods x (4 fixed + 2 norm-balanced weightings)
    fractions = [r["mean_fraction"] for r in report]
    assert fractions == sorted(fractions, reverse=True)
    best = report[0]
    assert best["chosen"] and best["adapter"] == "best" and not any(r["chosen"] for r in report[1:])
    entry = zoo.get("best")
    assert [entry.blend.method, list(entry.blend.weights)] == [best["blend"]["method"], best["blend"]["weights"]]
    assert entry.metrics["search"]["mean_fraction"] == pytest.approx(best["mean_fraction"])
    assert abs(best["tasks"]["qa"]["fraction"] - best["tasks"]["qa"]["score"] / 50.0) < 1e-9
    assert (zoo.reports_dir / "combinations.png").stat().st_size > 1000
    assert "**" + best["name"] + "**" in (zoo.reports_dir / "combinations.md").read_text()
    assert ("sent", "sentiment") in calls and ("qa1", "qa") in calls and ("sent", "qa") not in calls
    assert not zoo.adapter_dir("zoo_search_0").exists() and set(zoo.entries()) == {"sent", "qa1", "best"}
    assert {adapter for adapter, _ in calls} >= {"zoo_search_0", "zoo_search_11"}  # every blend was scored


def test_search_scores_real_outputs_on_the_nf4_base(zoo, data_dir):
    """End to end on the tiny base: real data, real generation through the served (NF4) runtime."""
    blends = [Blend(("sent", "qa1"), (0.5, 0.5), "cat"), Blend(("sent", "qa1"), (1.0, 1.0), "svd")]
    rows = search(zoo, blends, n=2, data_dir=data_dir)
    assert len(rows) == 2 and {r["name"] for r in rows} == {"cat 0.5/0.5", "svd 1/1"}
    for r in rows:
        assert set(r["tasks"]) == {"sentiment", "qa"}
        assert "accuracy" in r["tasks"]["sentiment"]["all"] and "f1" in r["tasks"]["qa"]["all"]
        assert r["n"] == 2
    assert set(zoo.entries()) == {"sent", "qa1"}


def test_report_rows_and_fractions(zoo_dir):
    from tasks import get_task

    specs = [get_task("sentiment"), get_task("qa")]
    row = blend_row("cat 0.5/0.5", None, specs, {"sentiment": {"accuracy": 0.6}, "qa": {"f1": 0.0}},
                    {"sentiment": 0.8, "qa": 0.0}, 10)
    assert row["tasks"]["sentiment"]["fraction"] == pytest.approx(0.75)
    assert row["tasks"]["qa"]["fraction"] is None and row["mean_fraction"] == pytest.approx(0.75)
    path = write_combination_report(Zoo(zoo_dir), [row])
    assert "0.750 (0.6 / 0.8)" in path.read_text()
    with pytest.raises(ZooError, match="no blends"):
        write_combination_report(Zoo(zoo_dir), [])


def test_report_from_scores_recorded_by_zoo_eval(zoo):
    """`zoo eval NAME --tasks ...` records a blend's scores; `zoo combine --report` turns them into fractions."""
    assert cli(zoo, "sent", "qa1", "--name", "mix") == 0
    zoo.set_metrics("mix", "tasks", {"sentiment": {"accuracy": 0.6, "macro_f1": 0.5}, "qa": {"f1": 30.0}})
    zoo.set_metrics("sent", "eval", {"task": "sentiment", "adapter": {"accuracy": 0.8}})
    zoo.set_metrics("qa1", "tasks", {"qa": {"f1": 40.0}})
    assert cli(zoo, "--report") == 0
    rows = json.loads((zoo.reports_dir / "combinations.json").read_text())["blends"]
    assert len(rows) == 1 and rows[0]["adapter"] == "mix"
    assert rows[0]["tasks"]["sentiment"]["fraction"] == pytest.approx(0.75)
    assert rows[0]["tasks"]["qa"]["fraction"] == pytest.approx(0.75)
    assert rows[0]["mean_fraction"] == pytest.approx(0.75)
    assert "mix (cat 0.5/0.5)" in (zoo.reports_dir / "combinations.md").read_text()


def test_norm_balanced_weights_equalize_the_parents_deltas(zoo):
    """delta_norm is the norm of all of scale * B @ A; norm-balanced weights give every parent the same one."""
    norms = [delta_norm(zoo, n) for n in ("sent", "qa1")]
    expected = [sum(float(d.norm()) ** 2 for d in deltas(zoo.adapter_dir(n)).values()) ** 0.5
                for n in ("sent", "qa1")]
    assert norms == pytest.approx(expected, rel=1e-5) and norms[0] != pytest.approx(norms[1])
    weights = norm_balanced(norms, 0.8)
    assert max(weights) == pytest.approx(0.8)
    assert weights[0] * norms[0] == pytest.approx(weights[1] * norms[1], rel=1e-2)
