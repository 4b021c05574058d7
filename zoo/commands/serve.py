"""`zoo serve`: the zoo behind an OpenAI-compatible HTTP API (`zoo.api`), the router choosing the adapter."""

from __future__ import annotations

import argparse
import dataclasses
import os

from zoo.errors import ZooError


def configure(p: argparse.ArgumentParser) -> None:
    from zoo.api.config import ServeConfig

    for f in dataclasses.fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            shown = f" (default {f.default})" if f.default is not None else ""
            p.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"] + shown)
    p.add_argument("--base", default=None, help="base model (default: the one the zoo's adapters were trained on)")


def config_from(args) -> "ServeConfig":
    from zoo.api.config import ServeConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
    values["api_key"] = values["api_key"] or os.environ.get("ZOO_API_KEY") or None
    if values["upstream"]:
        values["upstream_key"] = values["upstream_key"] or os.environ.get("ZOO_UPSTREAM_KEY") or None
    config = ServeConfig(**values)
    config.check_exposure()
    return config


def run(args) -> int:
    import uvicorn

    from zoo.api.app import create_app
    from zoo.api.metrics import Metrics
    from zoo.api.scheduler import Scheduler
    from zoo.commands.demo import check_zoo
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    config = config_from(args)
    if config.upstream:
        return serve_upstream(args, config)
    zoo = Zoo(args.zoo)
    check_zoo(zoo)  # a missing or empty zoo fails now, not after the server started
    server: uvicorn.Server | None = None

    def stop_server() -> None:
        server.should_exit = True

    scheduler = Scheduler(lambda: Runtime(zoo, base=args.base), config, Metrics(), on_load_failed=stop_server)
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, config), host=config.host, port=config.port,
                                          log_level="info", timeout_graceful_shutdown=5))
    server.run()
    if scheduler.load_failed:
        raise ZooError("the model failed to load (the error is above): run `zoo doctor`")
    return 0


def serve_upstream(args, config) -> int:
    """The router here, the model on another engine (zoo.api.upstream); a bad names file fails now."""
    import uvicorn

    from zoo.api.app import create_app
    from zoo.api.upstream import UpstreamBackend
    from zoo.api.upstream_names import load_names
    from zoo.store import Zoo

    if args.base:
        raise ZooError("--base does not apply with --upstream: the engine there serves the base")
    zoo = Zoo(args.zoo)
    if not config.upstream_map and not zoo.manifest_path.exists():
        raise ZooError(f"no zoo at {zoo.root}: give --zoo (its router and adapter names) or --upstream-map")
    load_names(zoo, config.upstream_map, config.upstream_kind)  # a bad or mismatched names file fails now
    backend = UpstreamBackend(zoo, config)
    uvicorn.Server(uvicorn.Config(create_app(backend, config), host=config.host, port=config.port,
                                  log_level="info", timeout_graceful_shutdown=5)).run()
    if backend.load_failed:
        raise ZooError("reading the zoo's router and names failed (the error is above): run `zoo doctor`")
    return 0
