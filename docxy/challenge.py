"""Bearer challenges and token scopes, translated between client and upstream.

Every ``WWW-Authenticate`` an upstream sends names its own token realm; a
client that follows it talks to the upstream's auth service directly, which
is exactly what a mirror exists to avoid (and is blocked where Docxy is
needed). So each challenge is re-issued with Docxy's configured realm,
keeping ``service``, ``scope`` and ``error`` as the upstream wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .names import upstream_name
from .oci import Scope, is_valid_name, map_scopes

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*({_QUOTED}|{_TOKEN})[ \t]*")
_SCHEME_RE = re.compile(rf"({_TOKEN})(?=[ \t,]|$)[ \t]*")
_TOKEN68_RE = re.compile(r"([A-Za-z0-9._~+/-]+=*)[ \t]*(?=,|$)")


@dataclass
class Challenge:
    """One challenge of a WWW-Authenticate header: scheme plus ordered params."""

    scheme: str
    params: list[tuple[str, str]]
    token68: str | None = None

    def get(self, key: str) -> str | None:
        for name, value in self.params:
            if name.lower() == key:
                return value
        return None

    def set(self, key: str, value: str) -> None:
        for index, (name, _) in enumerate(self.params):
            if name.lower() == key:
                self.params[index] = (name, value)
                return
        self.params.insert(0, (key, value))

    def render(self) -> str:
        if self.token68 is not None:
            return f"{self.scheme} {self.token68}"
        if not self.params:
            return self.scheme
        rendered = ",".join(f"{name}={_quote(value)}" for name, value in self.params)
        return f"{self.scheme} {rendered}"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenges(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges; several may share one header value."""
    challenges: list[Challenge] = []
    pos = 0
    while True:
        while pos < len(header) and header[pos] in " \t,":
            pos += 1
        if pos >= len(header):
            return challenges
        scheme = _SCHEME_RE.match(header, pos)
        if scheme is None:
            raise ValueError(f"malformed challenge at offset {pos}")
        challenge = Challenge(scheme.group(1), [])
        challenges.append(challenge)
        pos = scheme.end()
        token68 = _TOKEN68_RE.match(header, pos)
        if token68 is not None and _PARAM_RE.match(header, pos) is None:
            challenge.token68 = token68.group(1)
            pos = token68.end()
            continue
        while (param := _PARAM_RE.match(header, pos)) is not None:
            challenge.params.append((param.group(1), _unquote(param.group(2))))
            pos = param.end()
            if pos < len(header) and header[pos] != ",":
                raise ValueError(f"malformed challenge at offset {pos}")
            if pos < len(header):
                pos += 1


def rewrite_challenge_header(
    header: str, realm: str, scope_map: Callable[[str], str] | None = None
) -> str:
    """Point every Bearer challenge at ``realm``; other schemes stay as they are.

    ``scope_map`` translates the scope into the client's naming when the
    client reached the upstream through a path alias. An unparseable header
    is replaced by a bare Bearer challenge at our realm rather than passed
    on: passing it on could leak the upstream realm.
    """
    try:
        challenges = parse_challenges(header)
    except ValueError:
        return f"Bearer realm={_quote(realm)}"
    for challenge in challenges:
        if challenge.scheme.lower() == "bearer":
            challenge.set("realm", realm)
            scope = challenge.get("scope")
            if scope is not None and scope_map is not None:
                challenge.set("scope", scope_map(scope))
    return ", ".join(challenge.render() for challenge in challenges)


def find_bearer(headers: list[str]) -> Challenge | None:
    """The first Bearer challenge among WWW-Authenticate header values."""
    for header in headers:
        try:
            challenges = parse_challenges(header)
        except ValueError:
            continue
        for challenge in challenges:
            if challenge.scheme.lower() == "bearer" and challenge.get("realm"):
                return challenge
    return None


def rewrite_scope(scope: str, library_prefix: bool) -> str:
    """Add ``library/`` to the name of every 3-part repository scope.

    A scope parameter may hold several space-separated scopes. Anything that
    is not exactly ``repository:<valid name>:<actions>`` is left alone.
    """

    def one(text: str) -> str:
        parsed = Scope.parse(text)
        if not parsed.repository or not is_valid_name(parsed.name):
            return text
        return parsed.renamed(upstream_name(parsed.name, library_prefix))

    return map_scopes(scope, one)
