"""The learning-curve study (zoo.bench.curves): points land in the JSON one by one, a rerun skips them, and the
report has a table row per point and a plot."""

from __future__ import annotations

import json

from zoo.bench import curves


def test_study_points_land_resume_and_report(tmp_path, tiny_base_dir, data_dir, monkeypatch):
    out = tmp_path / "study"
    argv = ["sentiment", "--examples", "8", "16", "--vary", "lr=1e-3", "-n", "6", "--base", str(tiny_base_dir),
            "--data-dir", str(data_dir), "--out", str(out)]
    assert curves.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == ["sentiment/16", "sentiment/16/lr=1e-3", "sentiment/8"]
    point = results["sentiment/8"]
    assert point["examples"] == 8 and point["n"] == 6 and point["metric"] == "accuracy"
    assert point["interval"][0] <= point["adapter"] <= point["interval"][1] and point["train_seconds"] > 0
    # sentiment's own settings
    assert point["resolved"] == {"lr": 1e-3, "r": 16, "layers": 20, "row_tokens": 128, "batch": 8}

    trained = []
    monkeypatch.setattr(curves, "train_point", lambda *a, **k: trained.append(a) or {})
    assert curves.main(argv) == 0 and trained == []  # every point is done: nothing is trained again

    report = (out / "README.md").read_text()
    assert report.count("| 8 | - | lr 0.001, r 16, layers 20, row_tokens 128, batch 8 |") == 1
    assert "| 16 | lr=1e-3 | lr 0.001," in report
    assert (out / "curves.png").stat().st_size > 10_000


def test_a_bad_variation_is_a_clear_error(capsys):
    import pytest

    with pytest.raises(SystemExit):
        curves.main(["sentiment", "--examples", "8", "--vary", "colour=red"])
    assert "--vary takes SETTING=V1,V2" in capsys.readouterr().err
