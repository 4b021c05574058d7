"""`zoo demo`: serve the Gradio demo over a zoo (the one `make run` builds, by default)."""

from __future__ import annotations

import argparse
import os

from zoo.api.config import is_loopback
from zoo.cli import count
from zoo.errors import ZooError

AUTH_ENV = "ZOO_DEMO_AUTH"  # USER:PASSWORD, so the password need not appear in the process list


def configure(p: argparse.ArgumentParser) -> None:
    from demo.handlers import MAX_PROMPT_CHARS

    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network, "
                        "which needs --auth or --insecure)")
    p.add_argument("--port", type=count(1, 65535), default=7860, help="port to listen on (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a temporary public gradio.live link (needs internet, and --auth or --insecure)")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                   help=f"ask every visitor for this login (default: ${AUTH_ENV}, if set)")
    p.add_argument("--insecure", action="store_true",
                   help="serve a network address or --share link without a login (only on a network you trust)")
    p.add_argument("--max-prompt-chars", type=count(1, 1_000_000), default=MAX_PROMPT_CHARS,
                   help=f"longest prompt a visitor may send, in characters (default {MAX_PROMPT_CHARS})")
    p.add_argument("--queue-size", type=count(1, 10_000), default=64,
                   help="requests that may wait at once; more are turned away (default 64)")
    p.add_argument("--base", default=None,
                   help="base model (default: the one the zoo's adapters were trained on)")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """`USER:PASSWORD` (from --auth, else the environment) as Gradio's `auth` pair; None when neither is set."""
    text = text if text is not None else os.environ.get(AUTH_ENV) or None
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise ZooError(f"--auth (or ${AUTH_ENV}) takes USER:PASSWORD, both non-empty")
    return user.strip(), password


def check_exposure(host: str, share: bool, auth, insecure: bool) -> None:
    """A demo that strangers can reach asks for a login, unless the user says the network is theirs."""
    if auth is not None or insecure or (is_loopback(host) and not share):
        return
    where = "a public --share link" if share else f"--host {host} (reachable from the network)"
    raise ZooError(f"{where} would let anyone use the demo: pass --auth USER:PASSWORD (or set ${AUTH_ENV}), "
                   "or --insecure if you trust everyone who can reach it")


def check_zoo(zoo) -> list[str]:
    """The zoo's usable adapter names, or a ZooError that says what to run first."""
    if not zoo.manifest_path.exists():
        raise ZooError(f"no zoo at {zoo.root}: run `make run` first (or point --zoo / $ZOO_DIR at one)")
    healthy = zoo.healthy()
    if not healthy:
        problems = len(zoo.problems())
        why = f"{problems} broken, run `zoo doctor`" if problems else "it is empty"
        raise ZooError(f"the zoo at {zoo.root} has no usable adapter ({why}): run `make run` to train them")
    return healthy


def check_port(host: str, port: int) -> None:
    """Fail in a second, before the model loads, when the address cannot be served."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise ZooError(f"--port {port} is not a port number (1-65535)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ZooError(f"port {port} is in use on {host}: pick another with --port, or stop what uses it") from None
        raise ZooError(f"cannot listen on {host}:{port} ({e.strerror or e}): check --host (127.0.0.1: this machine "
                       "only, 0.0.0.0: every network interface)") from None


def run(args) -> int:
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    auth = parse_auth(args.auth)
    check_exposure(args.host, args.share, auth, args.insecure)
    check_zoo(zoo)
    check_port(args.host, args.port)
    from demo.app import Limits, build_app, serve
    from zoo.serving.runtime import Runtime

    runtime = Runtime(zoo, base=args.base)
    loaded = runtime.load_all()
    if not loaded:
        raise ZooError(f"none of the adapters in {zoo.root} fits the base {runtime.loaded.ref.id!r}: "
                       "pass the base they were trained on with --base")
    print(f"[zoo] demo over {zoo.root}: {len(loaded)} adapters on {runtime.loaded.ref.id} "
          "(Ctrl+C to stop)", flush=True)
    if auth is None and not is_loopback(args.host):
        print("[zoo] warning: no login (--insecure): anyone who can reach this address can use the demo", flush=True)
    app = build_app(runtime, Limits(prompt_chars=args.max_prompt_chars, queue_size=args.queue_size))
    try:
        serve(app, host=args.host, port=args.port, share=args.share, reports_dir=zoo.reports_dir, auth=auth)
    except OSError:  # taken between the check and the launch
        raise ZooError(f"cannot listen on {args.host}:{args.port}: pick another port with --port") from None
    return 0
