"""How many client connections Docxy takes at once: from ``RLIMIT_NOFILE``.

Every client connection is a descriptor, and most need a second one while
they are served (an upstream connection, a cache file). Docxy raises its
soft limit to the hard one at start (as Go programs do), and answers a
client connection beyond half of what is left after a reserve with ``503``
(see :class:`~docxy.channel.DocxyChannel`): clients can never take the
descriptors that running transfers need. The limit is read at every
connection, so one changed under a running Docxy (``prlimit``) counts at
once. Should the process still run out, Twisted accepts and closes new
connections with a reserved descriptor instead of failing.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()

RESERVE = 64  # descriptors for everything that is not a connection
_CEILING = 1 << 20  # a soft limit this high is plenty


def raise_soft_limit() -> int:
    """Raise the soft descriptor limit to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _CEILING if hard == resource.RLIM_INFINITY else min(hard, _CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.warn("cannot raise the descriptor limit: {why}", why=str(e))
    return soft


def client_capacity() -> int:
    """How many client connections may be open now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _CEILING
    return max(1, (soft - RESERVE) // 2)
