"""``docxy-prefetch``: warm a running Docxy's cache for a list of images.

For preparing a mirror before a rollout or an upstream outage::

    docxy-prefetch --mirror http://127.0.0.1:5000 alpine:3.20 ghcr.io/owner/img:1

It talks to Docxy over HTTP exactly as a client does: ``GET /v2/``, a token
from the realm of the challenge, the manifest with the full ``Accept`` set,
the chosen platforms of an index, then every blob ``GET`` read to the end
(hashed, verified and discarded). So the cache fills through the normal
path, with the same authorization checks as any pull. Blobs of one image
are fetched a few at a time (``--concurrency``). One summary line per
image on stdout; one line per failed image on stderr, and exit status 1.

An image named with a registry host (``ghcr.io/owner/img``) is asked for
under Docxy's path alias for it (``/v2/ghcr.io/owner/img/...``): the host
must be an alias of one of Docxy's upstreams (every preset's is). An image
without a host (``alpine``, ``owner/img``) goes to ``/v2/<name>/...``, so
Docxy's routing (default upstream, or a multi-component alias at the start
of the name) decides.

It runs on Twisted with Docxy's own upstream HTTP client
(:mod:`docxy.upstream_client`), under ``task.react``: :mod:`.references` reads
what to fetch, :mod:`.mirror` speaks HTTP and tokens to the mirror,
:mod:`.images` walks one image, :mod:`.cli` is the command line.
"""

from .cli import main

__all__ = ["main"]
