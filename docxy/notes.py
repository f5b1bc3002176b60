"""Facts about a request, noted as it is served, for its access-log line.

Kept apart from :mod:`docxy.site` (which writes the line) so that every
module can note facts without importing the Site and what it imports.
"""

from __future__ import annotations

from twisted.web.server import Request


def record(request: Request, **fields: object) -> None:
    """Note facts about the request for its access-log line."""
    notes = getattr(request, "notes", None)
    if isinstance(notes, dict):
        notes.update(fields)
