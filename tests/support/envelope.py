"""The registry error envelope, as every test of a refusal checks it.

``{"errors":[{"code","message","detail"}]}`` in JSON: clients (docker,
containerd, skopeo) show the code and message, so both must be there.
"""

from __future__ import annotations

import json
from typing import Any

from .registry import Response


def assert_envelope(
    resp: Response, status: int | None = None, code: str | None = None
) -> dict[str, Any]:
    """The first error of ``resp``'s envelope, its shape checked (and its
    status and code, where given)."""
    if status is not None:
        assert resp.status == status, (resp.status, resp.headers, resp.body)
    kind = resp.header("Content-Type") or ""
    assert kind.startswith("application/json"), (resp.headers, resp.body)
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise AssertionError(f"not a JSON error envelope: {resp.body!r}") from None
    assert isinstance(doc.get("errors"), list) and doc["errors"], doc
    error: dict[str, Any] = doc["errors"][0]
    assert isinstance(error.get("code"), str), doc
    assert isinstance(error.get("message"), str) and error["message"], doc
    assert "detail" in error, doc
    if code is not None:
        assert error["code"] == code, doc
    return error
