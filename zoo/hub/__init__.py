"""Publishing adapters to the Hugging Face Hub and loading them back (`zoo push`, `zoo pull`).

Layout:
    common.py  what push and pull share: the files an adapter repo holds, safe file types, repo ids, the base's
               Hub id, the Hub endpoint (`HF_ENDPOINT`) and the fail-fast reachability check
    push.py    repo folders (adapter, or whole zoo in one or many repos), written locally first, then uploaded
    pull.py    a Hub repo or local folder, checked through before `Zoo.install` adds anything
    cards.py   README.md model cards (huggingface_hub `ModelCard`, validated offline)

A published adapter repo holds the PEFT files, `training.json`, `task.json` (the resolved task spec, so a task
from a task file travels), `zoo_entry.json` (`Entry.to_json()` minus local-only fields), the card and the plot.
"""

from zoo.hub.cards import build_card, hf_license, zoo_card
from zoo.hub.common import check_repo_id, require_hub
from zoo.hub.pull import install, plan_pull
from zoo.hub.push import check_no_secret, find_token, stage_push, upload

__all__ = ["build_card", "check_no_secret", "check_repo_id", "find_token", "hf_license", "install", "plan_pull",
           "require_hub", "stage_push", "upload", "zoo_card"]
