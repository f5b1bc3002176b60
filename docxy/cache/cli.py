"""``docxy-cache``: list, size, verify, evict and prune a cache directory offline.

Reading commands (``list``, ``size``, ``verify``) work while a Docxy runs
on the directory, with a warning that it may change under them. Commands
that delete (``evict``, ``prune``, ``verify --delete``) take the
directory's lock first, so they refuse while a Docxy holds it (a running
Docxy keeps the cache's index in memory: files removed behind it would
leave it wrong), and a Docxy started meanwhile refuses to start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import SETTINGS, ConfigError, load_file
from ..oci import is_valid_digest
from .blob_store import BlobStore
from .directory import CacheDirError, CacheLock, default_cache_dir, holder
from .inventory import (
    KINDS,
    Item,
    item_path,
    items,
    remove,
    tag_count,
    temp_files,
    verify,
)

PROG = "docxy-cache"


class UsageError(Exception):
    """A one-line reason to stop with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and clean a Docxy cache directory offline.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache directory [default: $DOCXY_CACHE_DIR, the config "
        "file's cache-dir, else Docxy's default directory]",
    )
    parser.add_argument(
        "-c", "--config", help="Docxy's TOML file, to read its cache-dir"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="one line per cached blob/manifest")
    listing.add_argument("--kind", choices=KINDS, help="only blobs or manifests")
    listing.add_argument(
        "--sort",
        choices=("lru", "size", "digest"),
        default="lru",
        help="least recently used first (default), largest first, or by digest",
    )
    commands.add_parser("size", help="counts and bytes")
    checking = commands.add_parser("verify", help="hash every file against its digest")
    checking.add_argument(
        "--delete", action="store_true", help="delete damaged files (takes the lock)"
    )
    evicting = commands.add_parser(
        "evict", help="delete these digests (takes the lock)"
    )
    evicting.add_argument("digests", nargs="+", metavar="DIGEST")
    pruning = commands.add_parser(
        "prune",
        help="delete least recently used blobs and leftover temp files "
        "(takes the lock)",
    )
    pruning.add_argument(
        "--max-size", help="evict blobs, least recently used first, down to this"
    )
    pruning.add_argument(
        "--unused-for",
        type=float,
        metavar="DAYS",
        help="delete blobs and manifests not used for this many days",
    )
    return parser


def cache_dir(given: Path | None, config: str | None, environ: dict[str, str]) -> Path:
    """The directory as Docxy would choose it, most specific first."""
    if given is not None:
        return given
    if environ.get("DOCXY_CACHE_DIR"):
        return Path(environ["DOCXY_CACHE_DIR"])
    config = config or environ.get("DOCXY_CONFIG")
    if config:
        value = load_file(config).get("cache-dir")
        if value is not None:
            return Path(str(value))
    return default_cache_dir(environ=environ)


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _warn_if_running(root: Path) -> None:
    pid = holder(root)
    if pid is not None:
        who = f" (pid {pid})" if pid > 0 else ""
        sys.stderr.write(
            f"{PROG}: warning: a Docxy{who} is using {root}; what is listed may "
            "change meanwhile\n"
        )


def _lock(root: Path) -> CacheLock:
    pid = holder(root)
    if pid is not None:
        who = f" (pid {pid})" if pid > 0 else ""
        raise UsageError(
            f"{root} is in use by a Docxy{who}: stop it first (it keeps the "
            "cache's index in memory)"
        )
    try:
        return CacheLock.acquire(root)
    except CacheDirError as e:
        raise UsageError(str(e)) from None


def cmd_list(root: Path, args: argparse.Namespace) -> int:
    _warn_if_running(root)
    found = list(items(root, (args.kind,) if args.kind else KINDS))
    if args.sort == "lru":
        found.sort(key=lambda i: i.last_used)
    elif args.sort == "size":
        found.sort(key=lambda i: -i.size)
    else:
        found.sort(key=lambda i: i.digest)
    for item in found:
        print(f"{item.kind:8} {item.digest} {item.size:>12} {_when(item.last_used)}")
    return 0


def cmd_size(root: Path, args: argparse.Namespace) -> int:
    _warn_if_running(root)
    total = 0
    for kind in KINDS:
        found = list(items(root, (kind,)))
        size = sum(i.size for i in found)
        total += size
        print(f"{kind}s: {len(found)} files, {size} bytes ({_human(size)})")
    temps = temp_files(root)
    temp_size = sum(p.stat().st_size for p in temps if p.exists())
    print(f"tags: {tag_count(root)}")
    print(
        f"temp files: {len(temps)}, {temp_size} bytes (fills in flight, or cut "
        "off by a crash)"
    )
    print(f"total: {total} bytes ({_human(total)})")
    return 0


def cmd_verify(root: Path, args: argparse.Namespace) -> int:
    lock = _lock(root) if args.delete else None
    if lock is None:
        _warn_if_running(root)
    try:
        damaged = [item for item in items(root) if not verify(item)]
        for item in damaged:
            if args.delete:
                remove(item)
            action = "deleted" if args.delete else "damaged"
            print(f"{action} {item.kind} {item.digest} ({item.path})")
        checked = "checked every file"
        print(f"{checked}: {len(damaged)} damaged", file=sys.stderr)
        return 1 if damaged and not args.delete else 0
    finally:
        if lock is not None:
            lock.release()


def cmd_evict(root: Path, args: argparse.Namespace) -> int:
    for digest in args.digests:
        if not is_valid_digest(digest):
            raise UsageError(f"not a digest: {digest!r}")
    lock = _lock(root)
    try:
        missing = 0
        for digest in args.digests:
            paths = [(kind, item_path(root, kind, digest)) for kind in KINDS]
            present = [(kind, p) for kind, p in paths if p.is_file()]
            if not present:
                missing += 1
                print(f"{PROG}: {digest} is not cached", file=sys.stderr)
            for kind, path in present:
                remove(Item(kind, digest, path.stat().st_size, 0.0, path))
                print(f"evicted {kind} {digest}")
        return 1 if missing else 0
    finally:
        lock.release()


def cmd_prune(root: Path, args: argparse.Namespace) -> int:
    if args.max_size is None and args.unused_for is None:
        raise UsageError("prune: give --max-size and/or --unused-for")
    try:
        max_size = (
            SETTINGS["cache-max-size"]("max-size", args.max_size)
            if args.max_size is not None
            else None
        )
    except ConfigError as e:
        raise UsageError(str(e)) from None
    lock = _lock(root)
    try:
        removed = len(temp_files(root))  # BlobStore clears tmp/ when it opens
        if args.unused_for is not None:
            cutoff = time.time() - args.unused_for * 86400
            for item in items(root):
                if item.last_used < cutoff:
                    remove(item)
                    removed += 1
                    print(f"pruned {item.kind} {item.digest} (unused)")
        before = {i.digest: i.last_used for i in items(root, ("blob",))}
        # The daemon's own LRU (BlobStore evicts to its bound as it opens).
        store = BlobStore(root, max_size or sys.maxsize)
        gone = set(before) - set(store.entries)
        for digest in sorted(gone, key=before.__getitem__):
            removed += 1
            print(f"pruned blob {digest} (least recently used)")
        print(
            f"{removed} files removed; blobs now {store.total} bytes "
            f"({_human(store.total)})",
            file=sys.stderr,
        )
        return 0
    finally:
        lock.release()


COMMANDS = {
    "list": cmd_list,
    "size": cmd_size,
    "verify": cmd_verify,
    "evict": cmd_evict,
    "prune": cmd_prune,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        root = cache_dir(args.cache_dir, args.config, dict(os.environ))
        if not (root / "blobs").is_dir():
            raise UsageError(f"no Docxy cache in {root}")
        return COMMANDS[args.command](root, args)
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 2


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
