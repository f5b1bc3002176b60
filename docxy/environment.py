"""``DOCXY_*`` environment variables as settings, for containers.

A container or a Kubernetes pod is configured most easily by its
environment, so every setting ``name`` (``--name`` on the command line,
``name = ...`` in TOML) can also be given as ``DOCXY_NAME`` with dashes as
underscores: ``public-url`` <- ``DOCXY_PUBLIC_URL``, the file itself by
``DOCXY_CONFIG``. The command line wins over the environment, the
environment over the file. List settings take several values separated by
spaces (``DOCXY_PORT="tcp:5000 tcp:5001"``; an endpoint string may contain
commas, ``domains=a,b``) and names also by commas (``DOCXY_PRESET``).

A misspelt variable would silently do nothing, so an unknown ``DOCXY_*``
name is a configuration error, like an unknown key in the file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from .config import SETTINGS, ConfigError

PREFIX = "DOCXY_"
# [upstreams.<name>] tables have no one-line form: TOML only.
_TABLES = frozenset({"upstreams"})
_SPLIT = {
    "port": re.compile(r"\s+"),
    "preset": re.compile(r"[\s,]+"),
    "allow": re.compile(r"[\s,]+"),
    "trusted-proxies": re.compile(r"[\s,]+"),
}
# What the kubelet defines for a Service named "docxy" in the pod's
# namespace ("Docker links" variables), unless enableServiceLinks is false.
_SERVICE_LINK = re.compile(r"DOCXY_(SERVICE_HOST|SERVICE_PORT\w*|PORT_\d+_\w+)")


def variable(setting: str) -> str:
    """The environment variable of a setting: ``public-url`` -> ``DOCXY_PUBLIC_URL``."""
    return PREFIX + setting.upper().replace("-", "_")


VARIABLES: dict[str, str] = {
    variable(name): name for name in ("config", *SETTINGS) if name not in _TABLES
}
VARIABLES["DOCXY_LISTEN"] = "port"  # as --listen and listen = [...]
# Variables of Docxy's other commands, which may share an environment with
# the daemon (a container's, an EnvironmentFile): not the daemon's settings.
OTHER_COMMANDS = frozenset({"DOCXY_PREFETCH_USER"})  # docxy-prefetch


def settings_from_env(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings the ``DOCXY_*`` variables give (``config`` among them).

    Values are checked here so an error names the variable; they are
    returned as given (strings, lists for list settings) for
    :func:`docxy.config.build_config` to merge and parse like file values.
    """
    settings: dict[str, object] = {}
    for var in sorted(environ):
        if not var.startswith(PREFIX) or var in OTHER_COMMANDS:
            continue
        value = environ[var]
        name = VARIABLES.get(var)
        if name is None or (name == "port" and "://" in value):
            raise ConfigError(_unknown(var))
        parsed: object = value
        if name in _SPLIT:
            parsed = [v for v in _SPLIT[name].split(value.strip()) if v]
        if name != "config":
            SETTINGS[name](var, parsed)
        elif not value:
            raise ConfigError(f"{var}: expected a file name, got ''")
        if name in settings:
            raise ConfigError("DOCXY_LISTEN: an alias of DOCXY_PORT; set one of them")
        settings[name] = parsed
    return settings


def _unknown(var: str) -> str:
    if var == "DOCXY_PORT" or _SERVICE_LINK.fullmatch(var):
        return (
            f"{var}: looks like a Kubernetes service link of a Service named "
            "docxy; set enableServiceLinks: false in the pod spec"
        )
    close = difflib.get_close_matches(var, list(VARIABLES), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{var}: unknown environment variable{hint}"
