"""Endpoint plugin: ``acme:STATE_DIR:tcp:443:domains=...`` (see docs/tls.md).

Import-light on purpose: twistd and ``serverFromString`` import every
plugin module; the real work (and the reactor) lives in docxy.tls.endpoint.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class AcmeEndpointParser:
    prefix = "acme"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from docxy.tls.endpoint import parse_endpoint

        return parse_endpoint(reactor, *args, **kwargs)


acme = AcmeEndpointParser()
