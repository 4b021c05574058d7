"""The task registry, task files and their error messages."""

import json

import pytest

from tasks import all_tasks, get_task, register
from tasks.spec import LoraSettings, TaskSpec, TrainSettings
from zoo.data import load_rows
from zoo.errors import ZooError


def test_builtin_tasks_are_registered_with_several_templates():
    tasks = all_tasks()  # other tests may have registered task files too: only the built-ins are checked
    assert {"sentiment", "qa", "summarization"} <= set(tasks)
    for name in ("sentiment", "qa", "summarization"):
        assert len(tasks[name].templates) >= 3


EXPECTED_TARGET = {  # each built-in task's answer, read from a real row by hand
    "sentiment": lambda row: ("negative", "positive")[row["label"]],
    "qa": lambda row: row["answers"]["text"][0].strip(),
    "summarization": lambda row: row["summary"].strip(),
}


@pytest.mark.parametrize("name", ["sentiment", "qa", "summarization"])
def test_every_builtin_task_builds_prompts_and_targets_from_real_rows(name, data_dir):
    spec = get_task(name)
    rows = load_rows(spec, spec.train_split, data_dir, limit=5, seed=1)
    for row in rows:
        target = spec.target(row)
        assert target and target == EXPECTED_TARGET[name](row)
        for i in range(len(spec.templates)):
            prompt = spec.prompt(row, i)
            assert all(str(row[c])[:20] in prompt for c in spec.input_columns)


def test_sentiment_target_maps_integer_labels_to_words():
    spec = get_task("sentiment")
    assert spec.target({"sentence": "x", "label": 1}) == "positive"
    assert spec.target({"sentence": "x", "label": 0}) == "negative"


def test_qa_references_keep_every_answer():
    spec = get_task("qa")
    row = {"context": "c", "question": "q", "answers": {"text": ["a", "b"], "answer_start": [0, 1]}}
    assert spec.references(row) == ["a", "b"]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ZooError, match="unknown task 'nope'.*sentiment"):
        get_task("nope")


def test_duplicate_registration_is_refused():
    spec = get_task("sentiment")
    clone = TaskSpec(**{f: getattr(spec, f) for f in spec.__dataclass_fields__})
    with pytest.raises(ZooError, match="already registered"):
        register(clone)


@pytest.mark.parametrize("bad", ["Bad Name", "../x", "", "x" * 60])
def test_malformed_task_names_are_refused(bad):
    with pytest.raises(ZooError, match="invalid task name"):
        TaskSpec(name=bad, description="", dataset="d", input_columns=("a",), target_column="b",
                 templates=("{a}",), metric="rouge")


def test_template_slot_must_be_an_input_column():
    with pytest.raises(ZooError, match="not a plain input column"):
        TaskSpec(name="t", description="", dataset="d", input_columns=("a",), target_column="b",
                 templates=("{a} {oops}",), metric="rouge")


def test_settings_validate_and_overrides_apply():
    with pytest.raises(ZooError):
        LoraSettings(r=0)
    with pytest.raises(ZooError, match="unknown optimizer"):
        TrainSettings(optimizer="adamz")
    spec = get_task("sentiment").with_overrides(lora={"r": 4, "target_modules": ["q_proj"]}, train={"epochs": 2})
    assert spec.lora.r == 4 and spec.lora.module_names() == ["q_proj"] and spec.train.epochs == 2
    with pytest.raises(ZooError, match="unknown key .rank."):
        get_task("sentiment").with_overrides(lora={"rank": 4})


def _write_task_file(tmp_path, **over):
    data_dir = tmp_path / "mydata"
    data_dir.mkdir(exist_ok=True)
    rows = [{"text": f"item {i}", "tag": f"tag{i % 2}"} for i in range(10)]
    for split in ("train", "validation"):
        (data_dir / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    body = {"name": "tagger", "dataset": "mydata", "input_columns": ["text"], "output_column": "tag",
            "templates": ["Tag this: {text}"], "metric": "rouge", "lora": {"r": 4}, "train": {"max_examples": 4}}
    body.update(over)
    path = tmp_path / "tagger.json"
    path.write_text(json.dumps(body))
    return path


def test_task_file_defines_a_task_with_local_data(tmp_path):
    spec = get_task(str(_write_task_file(tmp_path)))
    assert spec.name == "tagger" and spec.lora.r == 4 and spec.train.max_examples == 4
    rows = load_rows(spec, "train")
    assert spec.target(rows[0]).startswith("tag")


def test_yaml_task_file(tmp_path):
    _write_task_file(tmp_path)
    path = tmp_path / "t.yaml"
    path.write_text("name: tagger2\ndataset: mydata\ninput_columns: [text]\noutput_column: tag\n"
                    "templates:\n  - 'Tag: {text}'\nmetric: rouge\n")
    assert get_task(str(path)).name == "tagger2"


def test_task_file_typo_suggests_the_right_key(tmp_path):
    path = _write_task_file(tmp_path, templtes=["x"])
    with pytest.raises(ZooError, match="unknown key 'templtes'; did you mean 'templates'"):
        get_task(str(path))


def test_task_file_with_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ZooError, match="not valid YAML"):
        get_task(str(path))


def test_dataset_missing_a_column_is_named(tmp_path):
    spec = get_task(str(_write_task_file(tmp_path, input_columns=["body"], templates=["{body}"])))
    with pytest.raises(ZooError, match=r"lacks column\(s\) \['body'\]"):
        load_rows(spec, "train")


def test_empty_split_is_refused(tmp_path):
    path = _write_task_file(tmp_path)
    (tmp_path / "mydata" / "train.jsonl").write_text("")
    with pytest.raises(ZooError, match="is empty"):
        load_rows(get_task(str(path)), "train")


def test_missing_local_split_says_how_to_fix(tmp_path):
    spec = get_task("sentiment")
    with pytest.raises(ZooError, match="no train.jsonl"):
        load_rows(spec, "train", data_dir=tmp_path)


def test_hub_unreachable_mentions_zoo_data_dir(monkeypatch):
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = get_task("sentiment")
    with pytest.raises(ZooError, match="ZOO_DATA_DIR"):
        load_rows(spec, "validation")


# ---- the train CLI is generated from the settings dataclasses ----

def _train_parser():
    from zoo.cli import build_parser

    parser = build_parser("train")
    return next(a for a in parser._actions if a.dest == "command").choices["train"]


@pytest.mark.parametrize("section, cls", [("lora", LoraSettings), ("train", TrainSettings)])
def test_every_settings_field_has_a_train_flag_with_its_help_and_default(section, cls):
    from dataclasses import fields

    actions = {a.dest: a for a in _train_parser()._actions}
    for f in fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        action = actions[f"{section}.{f.name}"]
        assert action.option_strings and f.metadata["help"] in action.help, f.name
        assert "(default: " in action.help, f.name


def test_train_help_lists_every_flag_with_its_default(capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split("positional arguments:", 1)[1]  # unwrapped, no usage
    for flag, parts in [("--row-tokens N", ["(default: 512;", "sentiment: 128"]), ("--warmup-ratio X", ["(default: 0.05"]),
                        ("--layers N|all", ["(default: all;", "sentiment: 20"]), ("--rank N, -r N", ["(default: 16"]),
                        ("--dora, --no-dora", ["(default: False"])]:
        assert flag in text, flag
        own_help = text.split(flag, 1)[1].split(" --", 1)[0]
        assert all(part in own_help for part in parts), (flag, own_help)


def test_train_flags_go_through_settings_from_dict():
    from zoo.commands.train import resolve_specs

    args = _train_parser().parse_args(["sentiment", "--layers", "all", "--targets", "q_proj,v_proj", "-r", "4",
                                       "--row-tokens", "64", "--warmup-ratio", "0.1", "--no-dora",
                                       "--max-examples", "all", "--time-budget", "2m"])
    spec = resolve_specs(args)[0]
    own = get_task("sentiment")
    assert own.lora.layers == 20 and spec.lora.layers is None  # "all" says every layer, over the task's 20
    assert spec.lora.module_names() == ["q_proj", "v_proj"] and spec.lora.r == 4 and spec.lora.use_dora is False
    assert spec.train.row_tokens == 64 and spec.train.warmup_ratio == 0.1
    assert own.train.max_examples == 800 and spec.train.max_examples is None  # "all": the time budget decides
    assert spec.train.learning_rate == own.train.learning_rate  # a flag not given keeps the task's setting
    assert not any(k.startswith(("lora.", "train.")) for k in vars(_train_parser().parse_args(["sentiment"])))


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "-1"], "batch size"), (["--max-steps", "0"], "max_steps must be at least 1"),
    (["--warmup-ratio", "2"], "warmup_ratio"), (["--layers", "some"], "--layers"), (["--rank", "0"], "LoRA"),
    (["--seed", "-3"], "seed must be at least 0"), (["--max-examples", "0"], "--max-examples"),
])
def test_out_of_range_train_settings_are_usage_errors(argv, message, tmp_path, capsys):
    from zoo.cli import main

    try:
        rc = main(["train", "sentiment", "--zoo", str(tmp_path), *argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before anything is loaded or written
