"""The ``docxy-prefetch`` command line: options, one line per image, exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IAgent

from ..upstream_client import UpstreamClient, make_agent
from .images import ImagePrefetcher
from .mirror import Answer, MirrorClient
from .references import Platform, PrefetchError, parse_platform, parse_reference

DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_CONCURRENCY = 4
USER_ENV = "DOCXY_PREFETCH_USER"


@dataclass(frozen=True)
class Options:
    """The command line, checked: what one run prefetches, and how."""

    mirror: str
    images: Sequence[str]
    platforms: Sequence[Platform] | None = (Platform("linux", "amd64"),)
    user: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 60.0
    ca_file: Path | None = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docxy-prefetch",
        description="Warm a running Docxy's cache for a list of images "
        "(pulls them through Docxy like a client, discarding the bytes).",
    )
    parser.add_argument(
        "--mirror", required=True, help="Docxy's URL, e.g. http://127.0.0.1:5000"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--platform",
        action="append",
        metavar="OS/ARCH[/VARIANT]",
        help=f"platform to fetch from multi-platform images; repeatable "
        f"(default {DEFAULT_PLATFORM}; without a variant, every variant)",
    )
    which.add_argument(
        "--all-platforms",
        action="store_true",
        help="fetch every manifest of multi-platform images",
    )
    parser.add_argument(
        "--user",
        metavar="USER:PASSWORD",
        default=os.environ.get(USER_ENV) or None,
        help=f"credentials for the token realm (default: ${USER_ENV}, which "
        "keeps them out of ps)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"blobs fetched at a time (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a connection may stay silent (default 60)",
    )
    parser.add_argument("--ca-file", type=Path, help="CA bundle for an https mirror")
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="alpine:3.20, library/alpine@sha256:..., ghcr.io/owner/img:1",
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """The checked command line; a usage error exits with status 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if urlsplit(args.mirror).scheme not in ("http", "https"):
        parser.error(f"--mirror {args.mirror!r}: expected http:// or https://")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    if args.user is not None and ":" not in args.user:
        parser.error("--user: expected USER:PASSWORD")
    try:
        platforms = (
            None
            if args.all_platforms
            else [parse_platform(p) for p in args.platform or [DEFAULT_PLATFORM]]
        )
    except ValueError as e:
        parser.error(f"--platform {e}")
    return Options(
        mirror=args.mirror,
        images=args.images,
        platforms=platforms,
        user=args.user,
        concurrency=args.concurrency,
        timeout=args.timeout,
        ca_file=args.ca_file,
    )


async def run(
    reactor: IReactorTime, options: Options, agent: IAgent | None = None
) -> int:
    """Prefetch every image in turn; the exit status (1 if any failed).

    ``agent`` stands in for the network in tests; by default it is the
    connection pool Docxy itself uses upstream.
    """
    pool = None
    if agent is None:
        agent, pool = make_agent(
            reactor,
            ca_file=options.ca_file,
            connect_timeout=options.timeout,
            max_connections=options.concurrency,
        )
    client = UpstreamClient(reactor, agent, header_timeout=options.timeout)
    prefetcher = ImagePrefetcher(
        options.mirror,
        MirrorClient(client, reactor, options.timeout),
        options.user,
        options.platforms,
        options.concurrency,
    )
    try:
        return await _each_image(reactor, prefetcher, options.images)
    finally:
        if pool is not None:
            await pool.closeCachedConnections()


async def _each_image(
    clock: IReactorTime, prefetcher: ImagePrefetcher, images: Sequence[str]
) -> int:
    ping: Answer | None = None
    ping_error: str | None = None
    try:
        ping = await prefetcher.ping()
    except PrefetchError as e:
        ping_error = str(e)
    failed = 0
    for text in images:
        started = clock.seconds()
        try:
            ref = parse_reference(text)
            if ping_error is not None:
                raise PrefetchError(ping_error)
            summary = await prefetcher.image(ref, ping)
        except (PrefetchError, ValueError) as e:
            failed += 1
            print(f"docxy-prefetch: {text}: {e}", file=sys.stderr, flush=True)
            continue
        skipped = f" foreign={summary.skipped}" if summary.skipped else ""
        print(
            f"{text}: {summary.digest} {','.join(summary.platforms)} "
            f"manifests={summary.manifests} blobs={summary.blobs}{skipped} "
            f"bytes={summary.bytes} ({_size(summary.bytes)}) "
            f"{clock.seconds() - started:.1f}s",
            flush=True,
        )
    return 1 if failed else 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse, then run on the global reactor; exits with the run's status."""
    task.react(_exit_with, (parse_options(argv),))


async def _exit_with(reactor: IReactorTime, options: Options) -> None:
    status = await run(reactor, options)
    if status:
        raise SystemExit(status)
