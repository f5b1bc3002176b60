"""``--log-format json``: one JSON object per line, for log collectors.

twistd picks its log observer after the plugin built its service, from an
``ILogObserver`` component of the application if there is one; Docxy sets
that component to twisted.logger's JSON observer, writing where twistd
would have (``--logfile``, stdout with ``-n``). Each event keeps its fields
(``client``, ``method``, ``path``, ``status`` ... for access lines), so
collectors need no parsing; the fields are the text format's, so the JSON
carries no more than the text does: never a query string or a token.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import ILogObserver, jsonFileLogObserver, textFileLogObserver
from twisted.python.logfile import LogFile


def json_observer(twistd_options: Mapping[str, Any]) -> ILogObserver:
    """The JSON observer, on the file twistd's own options name."""
    name = twistd_options.get("logfile")
    out: IO[Any]
    if to_stdout(twistd_options):
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(name or "twistd.log")
    # No RFC 7464 record separator: plain JSON lines, as collectors expect.
    return jsonFileLogObserver(out, recordSeparator="")


def to_stdout(twistd_options: Mapping[str, Any]) -> bool:
    """Does twistd log to standard output (``-n`` without ``--logfile``)?"""
    name = twistd_options.get("logfile")
    return name == "-" or (not name and bool(twistd_options.get("nodaemon")))


def worker_observer(log_format: str, out: IO[Any]) -> ILogObserver:
    """What a worker writes to the standard output it shares with its
    supervisor: lines in the format twistd writes them."""
    if log_format == "json":
        return jsonFileLogObserver(out, recordSeparator="")
    return textFileLogObserver(out)
