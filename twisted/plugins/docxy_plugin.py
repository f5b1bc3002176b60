"""twistd plugin: ``twistd docxy``.

Import-light on purpose: twistd imports every plugin before it picks a
reactor, so the real work lives in :mod:`docxy.tap`.
"""

from twisted.application.service import ServiceMaker

docxy = ServiceMaker(
    "Docxy",
    "docxy.tap",
    "A pull-through mirror for Docker / OCI registries.",
    "docxy",
)
