"""`zoo push` and `zoo pull`: publish adapters (or the whole zoo) to the Hugging Face Hub and load them back."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from zoo.errors import ZooError


def configure_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="adapter to publish (or --all)")
    p.add_argument("--all", action="store_true",
                   help="the whole zoo: repo USER/NAME-<adapter> per healthy adapter + USER/NAME with the manifest "
                        "and router (or everything in USER/NAME with --single-repo)")
    p.add_argument("--repo", required=True, help="target repo USER/NAME")
    p.add_argument("--single-repo", action="store_true", help="with --all: one repo, adapters in adapters/<name>/")
    p.add_argument("--private", action="store_true", help="create new repos as private (existing ones keep theirs)")
    p.add_argument("--dry-run", action="store_true", help="build the repo folders and list them; upload nothing")
    p.add_argument("--out", help="with --dry-run: write the repo folders here (one per repo) instead of a temp dir; an "
                        "existing OUT/<repo name> is replaced only if an earlier dry run wrote it")


def run_push(args) -> int:
    from zoo.hub import check_repo_id, find_token, stage_push
    from zoo.store import Zoo

    zoo = Zoo(args.zoo)
    names = _push_names(zoo, args)
    check_repo_id(args.repo)
    if args.out and not args.dry_run:
        raise ZooError("--out only goes with --dry-run (a real push stages in a temporary folder)")
    token = None if args.dry_run else find_token()  # before any work: a missing token costs nothing
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        folders = stage_push(zoo, names, args.repo, out, whole_zoo=args.all, single_repo=args.single_repo)
        _print_folders(folders, show_path=bool(args.out))
        if args.dry_run:
            print(f"[zoo] dry run: {len(folders)} repo(s) built, nothing uploaded")
            return 0
        return _upload(folders, token, args.private)


def _push_names(zoo, args) -> list[str]:
    """The adapters to publish: the named one, or every healthy one (broken ones are named and skipped)."""
    if bool(args.name) == bool(args.all):
        raise ZooError("give one adapter NAME or --all")
    if args.single_repo and not args.all:
        raise ZooError("--single-repo goes with --all (a single adapter always gets its own repo)")
    if args.name:
        zoo.get(args.name)
        return [args.name]
    healthy = zoo.healthy()
    for p in zoo.problems():
        print(f"[zoo] skipping {p.name}: {p.what}")
    if not healthy:
        raise ZooError(f"no healthy adapters to publish in {zoo.root}; train some with `zoo train TASK`")
    return healthy


def _print_folders(folders, show_path: bool) -> None:
    for f in folders:
        print(f"{f.repo_id}" + (f"  ({f.folder})" if show_path else ""))
        for rel in f.files():
            print(f"  {rel}  ({(f.folder / rel).stat().st_size} bytes)")


def _upload(folders, token: str, private: bool) -> int:
    from zoo.hub import check_no_secret, upload

    check_no_secret(folders, token)
    for url in upload(folders, token, private):
        print(f"[zoo] pushed {url}")
    return 0


def configure_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="Hub repo USER/NAME (an adapter or a whole zoo), or a local folder laid out as one")
    p.add_argument("--into", help="zoo folder to add to (default: --zoo, $ZOO_DIR or ./zoo-out)")
    p.add_argument("--name", help="local name for a single adapter (default: its published name)")
    p.add_argument("--base", help="local base the adapters must have been trained on (default: the base of this "
                                  "zoo's adapters, else the embedded smollm2-135m; never the one the source names)")
    p.add_argument("--force", action="store_true", help="replace adapters (and the router) that already exist")


def run_pull(args) -> int:
    from zoo.hub import install, plan_pull
    from zoo.store import Zoo

    zoo = Zoo(args.into or args.zoo)
    items, router = plan_pull(zoo, args.source, args.name, args.base)  # everything checked before anything is written
    router_installed = install(zoo, items, router, args.force)
    for item in items:
        print(f"[zoo] added {item.name} ({item.entry.task}) from {item.entry.pulled_from}")
    if router is not None:
        print(f"[zoo] router: {'installed' if router_installed else 'kept the local one (--force replaces it)'}")
    print(f"[zoo] {len(items)} adapter(s) added to {zoo.root}")
    return 0
