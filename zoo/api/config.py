"""Settings of `zoo serve`: where it listens, who may call it, and the bounds that keep one client from
exhausting it. The CLI's options map onto these fields one to one (their help is the option's help)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from zoo.errors import ZooError

UPSTREAM_KINDS = ("openai", "llama-server")


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
    upstream: str | None = _help("forward requests to this OpenAI-compatible engine (vLLM, SGLang, llama-server, "
                                 "another zoo serve), e.g. http://127.0.0.1:8001: the router runs here, the model "
                                 "there, and --max-batch bounds the requests it is sent at once", default=None)
    upstream_key: str | None = _help("key sent to the --upstream engine as `Authorization: Bearer KEY` "
                                     "(default: $ZOO_UPSTREAM_KEY)", default=None)
    upstream_kind: str = _help("openai (each adapter is a served model: vLLM, SGLang, zoo serve) or llama-server "
                               "(one model, per-request LoRA scales)", default="openai")
    upstream_map: str | None = _help("the names file `zoo export` wrote for the engine (routes.json): route -> "
                                     "served model (and LoRA ids for llama-server); default: the zoo's adapter "
                                     "names and `base`", default=None)

    def __post_init__(self):
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ZooError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_queue < 0 or self.timeout_s <= 0:
            raise ZooError("--max-queue must be 0 or more and --timeout-s more than 0")
        if not 0 <= self.port <= 65535:
            raise ZooError(f"--port {self.port}: use a port between 1 and 65535")
        if self.upstream_kind not in UPSTREAM_KINDS:
            raise ZooError(f"--upstream-kind {self.upstream_kind!r}: choose one of {', '.join(UPSTREAM_KINDS)}")
        if self.upstream is None and (self.upstream_key or self.upstream_map):
            raise ZooError("--upstream-key and --upstream-map need --upstream URL")
        if self.upstream is not None:
            check_url(self.upstream)

    def check_exposure(self) -> None:
        """Refuse to open the zoo to the network without a key, unless told to (`--insecure`)."""
        if self.api_key or self.insecure or is_loopback(self.host):
            return
        raise ZooError(f"--host {self.host} is reachable from other machines: set --api-key (or $ZOO_API_KEY), "
                       "or pass --insecure to serve without one")


def check_url(url: str) -> None:
    """An upstream must be a plain http(s) URL with a host (no credentials in it: they would be logged)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.query or parts.fragment:
        raise ZooError(f"--upstream {url[:200]!r}: give the engine's base URL, like http://127.0.0.1:8001 "
                       "(a key goes in --upstream-key)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
