"""The typed manifest entry: every field checked on read, unknown fields kept, dropped or refused on request."""

from __future__ import annotations

import json

import pytest

from zoo.errors import ZooError
from zoo.manifest import BaseInfo, BlendInfo, Entry

RAW = {"name": "sent", "task": "sentiment", "kind": "trained", "path": "adapters/sent", "lora": {"r": 16},
       "base": {"id": "smollm2-135m", "hash": "sha256:ab", "quantized": True}, "metrics": {}, "final_loss": 0.5}


def test_an_entry_survives_a_json_round_trip():
    entry = Entry.from_json(RAW)
    assert entry.base == BaseInfo("smollm2-135m", "sha256:ab", True) and entry.routes == ("sentiment",)
    assert Entry.from_json(json.loads(json.dumps(entry.to_json()))) == entry


def test_unknown_fields_are_kept_dropped_or_refused_as_asked():
    raw = {**RAW, "future_field": [1, 2]}
    assert Entry.from_json(raw).to_json()["future_field"] == [1, 2]  # a newer version's field survives
    assert "future_field" not in Entry.from_json(raw, unknown="drop").to_json()
    with pytest.raises(ZooError, match="future_field"):
        Entry.from_json(raw, unknown="refuse")


@pytest.mark.parametrize("change, what", [
    ({"task": "../evil.yaml"}, "invalid task name"), ({"name": "a.b"}, "invalid adapter name"),
    ({"kind": "root"}, "unknown kind"), ({"final_loss": True}, "wrong type"), ({"lora": "r=16"}, "wrong type"),
    ({"base": {"hash": 5}}, "base.hash"), ({"route_as": "qa"}, "route_as"), ({"path": None, "lora": None}, "no 'lora'"),
])
def test_a_field_of_the_wrong_kind_is_refused(change, what):
    with pytest.raises(ZooError, match=what):
        Entry.from_json({**RAW, **change})


def test_version_one_blends_are_read_into_blend_info():
    old = {**RAW, "kind": "combined", "parents": ["a", "b"], "weights": [0.5, 0.5], "method": "cat",
           "route_as": ["qa"]}
    entry = Entry.from_json(old)
    assert entry.blend == BlendInfo(("a", "b"), (0.5, 0.5), "cat") and entry.routes == ("qa",)
    assert "parents" not in entry.to_json() and entry.to_json()["blend"]["parents"] == ["a", "b"]
