"""`zoo demo`: serve the Gradio demo over a zoo (the one `make run` builds, by default)."""

from __future__ import annotations

import argparse

from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a temporary public gradio.live link (needs internet)")
    p.add_argument("--base", default=None,
                   help="base model (default: the one the zoo's adapters were trained on)")


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
    check_zoo(zoo)
    check_port(args.host, args.port)
    from demo.app import build_app, serve
    from zoo.serving.runtime import Runtime

    runtime = Runtime(zoo, base=args.base)
    loaded = runtime.load_all()
    if not loaded:
        raise ZooError(f"none of the adapters in {zoo.root} fits the base {runtime.loaded.ref.id!r}: "
                       "pass the base they were trained on with --base")
    print(f"[zoo] demo over {zoo.root}: {len(loaded)} adapters on {runtime.loaded.ref.id} "
          "(Ctrl+C to stop)", flush=True)
    try:
        serve(build_app(runtime), host=args.host, port=args.port, share=args.share, reports_dir=zoo.reports_dir)
    except OSError:  # taken between the check and the launch
        raise ZooError(f"cannot listen on {args.host}:{args.port}: pick another port with --port") from None
    return 0
