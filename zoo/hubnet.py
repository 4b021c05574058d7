"""Fail fast, with a useful message, when the Hugging Face Hub cannot be reached (instead of minutes of retries)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from zoo.errors import ZooError


def hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, offline_fix: str, cached=None) -> None:
    """Raise a one-line ZooError naming `what` could not be fetched and how to work offline."""
    if cached is not None and cached():
        return
    if not hub_reachable():
        raise ZooError(f"{what}: the Hugging Face Hub is unreachable (offline?); {offline_fix}")
