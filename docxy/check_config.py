"""``twistd docxy --check-config``: would Docxy start with this configuration?

For a changed ConfigMap, systemd drop-in or ``DOCXY_*`` environment, before
the rollout. The check runs what start runs before it serves: every setting
parsed as at start (:mod:`docxy.tap`), the files checked
(:mod:`docxy.preflight`). Where start would take the cache directory's lock
or listen, the check says whether a running Docxy holds the cache and binds
each port for the instant of the check: on a live configuration both are
taken by the Docxy that runs it, so either is a warning, not an error.
Nothing is created, no upstream or ACME CA is contacted, and no credential
is printed (accounts by user and file name only).

One line per finding on stdout and a summary; exit status 0 if Docxy would
start, else 2 with the one line start would print on stderr.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from twisted.internet.error import CannotListenError

from .cache.directory import holder
from .config import Config
from .config_values import ConfigError
from .environment import VARIABLES
from .listeners import reason
from .preflight import (
    ERROR,
    OK,
    WARNING,
    Finding,
    endpoint_of,
    file_findings,
    listening_ports,
    refusal,
)
from .shared_ports import listen_now
from .start_warnings import start_warnings
from .tls.endpoint import AcmeEndpoint

SUMMARY = "docxy: configuration check:"


def run(config: Config, config_file: str) -> int:
    """``--check-config`` of a configuration that parsed: the exit status."""
    from twisted.internet import reactor

    found = check(config, reactor, os.environ, config_file or None)
    return report(found, sys.stdout, sys.stderr)


def check(
    config: Config, reactor: Any, environ: Mapping[str, str], config_file: str | None
) -> list[Finding]:
    """Every finding, in the order start would meet them."""
    return [
        *settings(config, environ, config_file),
        *file_findings(config, reactor),
        *cache_holder(config),
        *ports(config, reactor),
        *(Finding(WARNING, text) for text in start_warnings(config)),
    ]


def report(findings: list[Finding], out: TextIO, err: TextIO) -> int:
    """Print the findings and the summary; the exit status."""
    for finding in findings:
        out.write(finding.line + "\n")
    errors = [f for f in findings if f.level == ERROR]
    warnings = sum(f.level == WARNING for f in findings)
    counts = f"{_count(len(errors), 'error')}, {_count(warnings, 'warning')}"
    verdict = "Docxy would not start" if errors else "Docxy would start"
    out.write(f"{SUMMARY} {verdict} ({counts})\n")
    out.flush()
    if errors:
        err.write(errors[0].stop + "\n")  # what start would stop with
        err.flush()
        return 2
    return 0


def _count(number: int, what: str) -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def settings(
    config: Config, environ: Mapping[str, str], config_file: str | None
) -> Iterator[Finding]:
    """Where the settings came from and what they mean (from the Config)."""
    sources = ["the command line"]
    variables = sorted(v for v in environ if v in VARIABLES)
    if variables:
        sources.append(", ".join(variables))
    if config_file:
        sources.append(f"the file {config_file!r}")
    yield Finding(OK, f"settings: parsed from {' over '.join(sources)}")
    yield Finding(OK, f"public-url: {config.public_url}")
    for upstream in config.upstreams:
        default = " (default)" if upstream.name == config.default_upstream else ""
        realm = upstream.realm or "from its challenge (not asked now)"
        line = f"upstream {upstream.name}{default}: {upstream.url}, token realm {realm}"
        if upstream.credentials is not None:  # the user and the file, no secret
            who = upstream.credentials
            line += f", account {who.username} ({who.source})"
        yield Finding(OK, line)
    many = "processes sharing the ports" if config.workers > 1 else "process"
    yield Finding(OK, f"workers: {config.workers} {many}")


def cache_holder(config: Config) -> list[Finding]:
    """Start would stop if another Docxy held the cache; on a live
    configuration the running one does."""
    root = config.cache_dir
    owner = None if root is None or not root.exists() else holder(root)
    if owner is None:
        return []
    pid = f" (pid {owner})" if owner > 0 else ""
    return [
        Finding(
            WARNING,
            f"cache-dir: {str(root)!r} is held by a running Docxy{pid}: expected "
            "when checking its live configuration; another Docxy would stop at "
            "start while it runs",
        )
    ]


def ports(config: Config, reactor: Any) -> Iterator[Finding]:
    """Each port bound for the instant of the check, as start binds it."""
    for port in listening_ports(config):
        endpoint = endpoint_of(reactor, port)
        if endpoint is None:
            yield Finding(
                WARNING,
                f"port {port}: not checked: its socket is systemd's to pass at "
                "start (socket activation), and this check has none (is the "
                ".socket unit listening? systemctl status docxy.socket)",
            )
        elif "systemd:" in port:
            yield Finding(OK, f"port {port}: inherited from systemd (not bound here)")
        else:
            yield _bind(port, endpoint, reactor)


def _bind(port: str, endpoint: Any, reactor: Any) -> Finding:
    if isinstance(endpoint, AcmeEndpoint):
        endpoint = endpoint.wrapped  # its listen would start the ACME manager
    try:
        listening = listen_now(endpoint)
    except Exception as e:
        why = reason(e)
        cause = e.socketError if isinstance(e, CannotListenError) else e
        if getattr(cause, "errno", None) == errno.EADDRINUSE:
            return Finding(
                WARNING,
                f"port {port}: in use ({why}): expected when checking the live "
                "configuration of the Docxy listening there; any other start "
                "would stop",
            )
        text = f"cannot listen on {port}: {why}"
        return Finding(ERROR, text, f"docxy: {text}")
    listening.stopListening()
    reactor.runUntilCurrent()  # the close Twisted schedules: done now
    return Finding(OK, f"port {port}: free")


def refused(
    error: ConfigError, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """A setting start would refuse: nothing else can be checked."""
    return report([refusal(error)], out or sys.stdout, err or sys.stderr)
