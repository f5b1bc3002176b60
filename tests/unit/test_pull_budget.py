"""The pull budget: gauges per upstream and account, one warning, and no
hammering while a 429's Retry-After runs (one probe after it), in memory."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.web.http_headers import Headers
from zope.interface import implementer

from docxy.metrics import Metrics
from docxy.pull_budget import ANONYMOUS, CLIENT, PullBudget
from docxy.ratelimit import RateLimitedError

HUB = "https://registry-1.docker.io/v2/library/alpine/manifests/3"


def budget(clock: Clock, warn_below: int | None = 10) -> tuple[PullBudget, Metrics]:
    metrics = Metrics({"docker.io": "https://registry-1.docker.io"})
    return PullBudget(clock, metrics.upstream_name, warn_below, metrics), metrics


def limited(retry_after: bytes = b"30") -> Headers:
    return Headers(
        {
            b"retry-after": [retry_after],
            b"ratelimit-limit": [b"100;w=21600"],
            b"ratelimit-remaining": [b"0;w=21600"],
        }
    )


def test_after_a_429_one_probe_once_retry_after_has_passed() -> None:
    clock = Clock()
    pulls, _ = budget(clock)
    pulls.check(HUB, ANONYMOUS)
    pulls.observe(HUB, ANONYMOUS, 429, limited(b"30"))
    with pytest.raises(RateLimitedError) as caught:
        pulls.check(HUB, ANONYMOUS)
    assert caught.value.retry_after == b"30"
    assert caught.value.envelope().status == 429
    clock.advance(20)
    with pytest.raises(RateLimitedError) as caught:
        pulls.check(HUB, ANONYMOUS)
    assert caught.value.retry_after == b"10"
    clock.advance(10)
    pulls.check(HUB, ANONYMOUS)  # the probe goes
    with pytest.raises(RateLimitedError):
        pulls.check(HUB, ANONYMOUS)  # every other request waits for its answer
    pulls.observe(HUB, ANONYMOUS, 200, Headers())
    pulls.check(HUB, ANONYMOUS)
    pulls.check(HUB, ANONYMOUS)


def test_a_probe_that_fails_lets_the_next_request_probe() -> None:
    clock = Clock()
    pulls, _ = budget(clock)
    pulls.observe(HUB, ANONYMOUS, 429, limited(b"5"))
    clock.advance(5)
    pulls.check(HUB, ANONYMOUS)  # the probe
    with pytest.raises(RateLimitedError):
        pulls.check(HUB, ANONYMOUS)  # while it is out, nobody else goes
    pulls.failed(HUB, ANONYMOUS)
    pulls.check(HUB, ANONYMOUS)  # the next probe
    with pytest.raises(RateLimitedError):
        pulls.check(HUB, ANONYMOUS)


def test_the_gate_is_per_account_and_never_for_clients_own_credentials() -> None:
    clock = Clock()
    pulls, _ = budget(clock)
    pulls.observe(HUB, ANONYMOUS, 429, limited())
    with pytest.raises(RateLimitedError):
        pulls.check(HUB, ANONYMOUS)
    pulls.check(HUB, "mirrorbot")  # another account's gate is open
    pulls.observe(HUB, CLIENT, 429, limited())
    pulls.check(HUB, CLIENT)
    pulls.check(HUB, CLIENT)  # never held back: the client retries on its own


def test_an_http_date_retry_after_and_a_missing_one() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    pulls, _ = budget(clock)
    pulls.observe(HUB, ANONYMOUS, 429, limited(b"Tue, 14 Nov 2023 22:33:20 GMT"))
    with pytest.raises(RateLimitedError) as caught:
        pulls.check(HUB, ANONYMOUS)
    assert caught.value.retry_after == b"1200"
    pulls.observe(HUB, "bot", 429, Headers())
    with pytest.raises(RateLimitedError) as caught:
        pulls.check(HUB, "bot")
    assert caught.value.retry_after == b"60"


def test_gauges_per_upstream_and_account_and_one_warning_below_the_threshold() -> None:
    clock = Clock()
    pulls, metrics = budget(clock, warn_below=10)
    authorization = b"Bearer mirror-token"
    pulls.learn(authorization, "mirrorbot")
    account = pulls.account_of(Headers({b"authorization": [authorization]}))
    assert account == "mirrorbot"
    assert pulls.account_of(Headers()) == ANONYMOUS
    assert pulls.account_of(Headers({b"authorization": [b"Bearer x"]})) == CLIENT
    warnings: list[dict[str, Any]] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if "pull budget" in str(event.get("log_format")):
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for left in (b"11", b"9", b"8", b"12", b"7"):
            headers = Headers(
                {
                    b"ratelimit-limit": [b"200;w=21600"],
                    b"ratelimit-remaining": [left + b";w=21600"],
                    b"docker-ratelimit-source": [b"a1b2c3"],
                }
            )
            pulls.observe(HUB, account, 200, headers)
    finally:
        globalLogPublisher.removeObserver(observe)
    # Once on falling below, again only after it rose above in between.
    assert [w["remaining"] for w in warnings] == [9, 7]
    assert warnings[0]["source"] == "a1b2c3"
    text = metrics.render().decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("account", "mirrorbot"), ("upstream", "docker.io"))
    assert found[("docxy_upstream_ratelimit_remaining", labels)] == 7
    assert found[("docxy_upstream_ratelimit_limit", labels)] == 200
