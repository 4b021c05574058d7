"""Offline metrics: hand-computed values for each metric, SQuAD normalization, ROUGE tokenization (Google's
`rouge-score`), label parsing, and the `evaluate` module that `score` goes through."""

import pytest

from zoo.errors import ZooError
from zoo.metrics import (METRICS, MODULE_PATH, PRIMARY, classification_scores, clean_span, compute, normalize_answer,
                         parse_label, rouge_scores, score, squad_f1, squad_scores)

LABELS = ("negative", "positive")


@pytest.mark.parametrize("text, expected", [
    ("Positive.", "positive"),
    ("The sentiment is negative", "negative"),
    ("negative<|im_end|>", "negative"),
    ("POSITIVE", "positive"),
    ("positive or negative? It is negative.", "positive"),  # the first mentioned wins
    ("Negative, not positive", "negative"),
    ("nonnegative numbers", None),  # whole words only
    ("I am not sure.", None),
    ("", None),
])
def test_parse_label(text, expected):
    assert parse_label(text, LABELS) == expected


def test_parse_label_prefers_the_longer_label_at_the_same_place():
    labels = ("entailment", "not_entailment")
    assert parse_label("not_entailment", labels) == "not_entailment"
    assert parse_label("Entailment.", labels) == "entailment"


def test_classification_scores_hand_computed():
    preds = ["Positive.", "negative", "no idea", "The answer is positive"]
    refs = ["positive", "negative", "negative", "negative"]
    out = classification_scores(preds, refs, LABELS)
    # positive: P=1/2 R=1 F=2/3; negative: P=1 R=1/3 F=1/2; the unparseable "no idea" is wrong
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_classification_accepts_one_item_reference_lists_and_empty_texts():
    out = score("accuracy", ["", "positive"], [["negative"], ["positive"]], labels=LABELS)
    # negative: never predicted, F=0; positive: P = R = 1; the empty text is simply wrong
    assert out == {"accuracy": 0.5, "macro_f1": pytest.approx((0 + 1) / 2)}


def test_classification_rejects_missing_labels_and_foreign_references():
    with pytest.raises(ZooError, match="labels"):
        classification_scores(["positive"], ["positive"], None)
    with pytest.raises(ZooError, match="neutral"):
        classification_scores(["positive"], ["neutral"], LABELS)


@pytest.mark.parametrize("text, expected", [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("An apple, a day", "apple day"),
    ("theater", "theater"),  # articles only as whole words
    ("  U.S.  Army ", "us army"),
    ("", ""),
])
def test_squad_normalization(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("raw, expected", [
    ('"Paris."', "Paris"),
    ("'Paris'.", "Paris"),
    (" Paris\nBecause it is the capital.", "Paris"),
    ("\n\nParis", "Paris"),
    ("1889.", "1889"),
    ("", ""),
])
def test_clean_span(raw, expected):
    assert clean_span(raw) == expected


def test_squad_f1_token_overlap():
    # prediction {big, red, barn} vs reference {red, barn, house}: 2 shared, P = R = 2/3
    assert squad_f1("the big red barn", "red barn house") == pytest.approx(2 / 3)
    assert squad_f1("", "red barn") == 0.0


def test_squad_scores_hand_computed():
    preds = ["Paris.", '"the big red barn"\nsecond line', "", "Red barn"]
    refs = [["Paris"], ["red barn house"], ["x"], ["red barn house", "the red barn"]]
    out = squad_scores(preds, refs)
    # EM: 1, 0, 0, 1 (max over references); F1: 1, 2/3, 0, 1
    assert out["exact_match"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)


def test_rouge_tokenizes_as_rouge_score_default():
    # lowercase, anything but [a-z0-9] splits words, no stemming: "Don't-stop 2Night! café" is don t stop 2night caf
    same = rouge_scores(["Don't-stop 2Night! café"], [["don t stop 2night caf"]])
    assert same == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    unstemmed = rouge_scores(["cats running"], [["cat run"]])
    assert unstemmed["rouge1"] == 0.0


def test_rouge_known_strings():
    preds = ["the cat sat on the mat", "Hello, World!"]
    refs = [["the cat is on the mat"], ["goodbye world", "hello there world"]]
    out = rouge_scores(preds, refs)
    # ex1: R1 5/6, R2 3/5, RL (LCS "the cat on the mat") 5/6.
    # ex2: best reference is "hello there world": R1 = RL = F(P=1, R=2/3) = 0.8; no shared bigram
    assert out["rouge1"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)
    assert out["rouge2"] == pytest.approx(100 * (3 / 5 + 0) / 2)
    assert out["rougeL"] == pytest.approx(100 * (5 / 6 + 0.8) / 2)


def test_rouge_l_is_sentence_level_lcs():
    # the longest common subsequence of "a b c d" and "d c b a" is one word: RL = F(1/4, 1/4)
    out = rouge_scores(["a b c d"], [["d c b a"]])
    assert out["rouge1"] == pytest.approx(100.0)
    assert out["rougeL"] == pytest.approx(25.0)


def test_rouge_empty_texts_score_zero():
    assert rouge_scores(["", "x"], [["a b"], [""]]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize("metric, labels", [("accuracy", LABELS), ("squad", None), ("rouge", None)])
def test_score_dispatch_primary_and_empty_batch(metric, labels):
    out = score(metric, ["positive"], [["positive"]], labels=labels)
    assert out[PRIMARY[metric]] == pytest.approx(1.0 if metric == "accuracy" else 100.0)
    with pytest.raises(ZooError, match="nothing to score"):
        score(metric, [], [], labels=labels)
    with pytest.raises(ZooError, match="one prediction per example"):
        score(metric, ["a", "b"], [["a"]], labels=labels)


def test_unknown_metric():
    with pytest.raises(ZooError, match="unknown metric"):
        score("bleu", ["a"], [["a"]])
    with pytest.raises(ZooError, match="unknown metric"):
        compute("bleu", ["a"], [["a"]])


@pytest.mark.parametrize("metric, labels", [("accuracy", LABELS), ("squad", None), ("rouge", None)])
def test_evaluate_load_of_the_local_module_matches_score(metric, labels):
    """The project's metrics have `evaluate`'s interface offline: `evaluate.load(<local file>)`, no Hub."""
    import evaluate

    preds = ["Positive, and the answer is Paris.", "negative: the big red barn"]
    refs = [["positive"], ["positive"]] if metric == "accuracy" else [["positive", "Paris"], ["red barn house"]]
    module = evaluate.load(str(MODULE_PATH), metric, keep_in_memory=True)
    extra = {"labels": list(labels)} if labels else {}
    expected = compute(metric, preds, refs, labels)
    assert module.compute(predictions=preds, references=refs, **extra) == pytest.approx(expected)
    assert score(metric, preds, refs, labels=labels) == pytest.approx(expected)
    assert set(expected) == set(METRICS[metric].keys)


def test_score_goes_through_the_evaluate_module(monkeypatch):
    import zoo.metrics as metrics

    class Spy:
        def compute(self, **kwargs):
            return {"via": "evaluate", "n": len(kwargs["predictions"])}

    monkeypatch.setattr(metrics, "evaluation_module", lambda metric: Spy())
    assert score("rouge", ["a", "b"], [["a"], ["b"]]) == {"via": "evaluate", "n": 2}


def test_undecodable_text_is_scored_not_crashed():
    # a lone surrogate (undecodable bytes from stdin) cannot go into Arrow: it becomes U+FFFD
    assert score("squad", ["caf\udce9"], [["café"]])["exact_match"] == 0.0


@pytest.mark.parametrize("metric, predictions, references", [
    ("accuracy", ["Positive.", "negative", "no idea", "positive", "", "NEGATIVE!"] * 5,
     ["positive", "negative", "negative", "negative", "positive", "negative"] * 5),
    ("accuracy", ["positive"] * 4, ["positive", "positive", "negative", "positive"]),  # a label never guessed
    ("squad", ['"Paris."', "the Eiffel tower", "", "blue"], [["Paris"], ["Eiffel Tower", "tower"], ["x"], ["red"]]),
    ("rouge", ["the cat sat", "", "a dog"], [["the cat sat down"], ["x"], ["a dog barks", "dogs"]]),
])
def test_per_example_scores_give_back_every_number_of_score(metric, predictions, references):
    """What the bootstrap resamples: column means of `example_scores` give `score`'s numbers, macro-F1 included."""
    from zoo.metrics import example_scores, from_means

    per_example = example_scores(metric, predictions, references, labels=LABELS)
    expected = score(metric, predictions, references, labels=LABELS)
    assert set(per_example) == set(expected)
    for key, rows in per_example.items():
        assert rows.shape[0] == len(predictions)
        assert float(from_means(key, rows.mean(axis=0))) == pytest.approx(expected[key], abs=1e-9)


def test_rouge_leaves_a_redirected_stderr_open_through_a_later_logging_config():
    """rouge_score's absl handler kept the stderr of its import and closed it at the next `logging.config` call
    (uvicorn's, Gradio's) unless it was the current one: a redirected stderr (pytest's capture, Jupyter) was closed.
    A fresh process, so that absl is imported here."""
    import subprocess
    import sys

    code = ("import io, sys, logging.config; from zoo.metrics import score; fake = io.StringIO(); real = sys.stderr; "
            "sys.stderr = fake; score('rouge', ['a b'], [['a b']]); sys.stderr = real; "
            "logging.config.dictConfig({'version': 1}); print('closed' if fake.closed else 'open')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "open"
