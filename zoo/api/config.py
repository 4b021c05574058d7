"""Settings of `zoo serve`: where it listens, who may call it, and the bounds that keep one client from
exhausting it. The CLI's options map onto these fields one to one (their help is the option's help)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from zoo.errors import ZooError


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class ServeConfig:
    host: str = _help("address to listen on (127.0.0.1: this machine only)", default="127.0.0.1")
    port: int = _help("port to listen on", default=8000)
    api_key: str | None = _help("key every /v1 call must send as `Authorization: Bearer KEY` "
                                "(default: $ZOO_API_KEY)", default=None)
    insecure: bool = _help("allow a non-loopback --host without an API key", default=False)
    max_body_bytes: int = _help("largest request body accepted (413 over it)", default=256 * 1024)
    max_prompt_tokens: int = _help("longest prompt accepted, in tokens (413 over it)", default=4096)
    max_tokens: int = _help("largest max_tokens a request may ask for (400 over it)", default=2048)
    max_batch: int = _help("requests decoded together at most", default=16)
    max_queue: int = _help("requests waiting for a batch row at most (429 over it)", default=64)
    timeout_s: float = _help("seconds a request may take before it is abandoned (504)", default=300.0)

    def __post_init__(self):
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ZooError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_queue < 0 or self.timeout_s <= 0:
            raise ZooError("--max-queue must be 0 or more and --timeout-s more than 0")
        if not 0 <= self.port <= 65535:
            raise ZooError(f"--port {self.port}: use a port between 1 and 65535")

    def check_exposure(self) -> None:
        """Refuse to open the zoo to the network without a key, unless told to (`--insecure`)."""
        if self.api_key or self.insecure or is_loopback(self.host):
            return
        raise ZooError(f"--host {self.host} is reachable from other machines: set --api-key (or $ZOO_API_KEY), "
                       "or pass --insecure to serve without one")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
