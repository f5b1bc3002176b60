"""Certificate renewal by the manager, against a scripted CA, in memory.

The manager runs on a ``MemoryReactorClock``; its ACME client's
connections are iosim pumps into ``IssuingCA`` (plain http: TLS to the CA
is not what these tests are about, and the real CA's is in the
integration tests). A stored certificate past 2/3 of its life
is renewed at once; a CA that is down leaves it in service and is asked
again after the retry delay on the clock, not before. Issuance and hot
swaps against the real pebble are in tests/integration/test_acme.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import Site

from docxy.tls.certs import KeyAndChain, new_key
from docxy.tls.http01 import Http01Store
from docxy.tls.manager import CertificateManager
from docxy.tls.spec import AcmeSpec
from docxy.tls.store import AcmeStore
from tests.support.acme_ca import IssuingCA
from tests.support.memory import Wiring

NAME = "mirror.test"
BASE = "http://127.0.0.1:14000"
RETRY = 60.0
DAY = datetime.timedelta(days=1)


@dataclass
class Setup:
    ca: IssuingCA
    net: Wiring
    manager: CertificateManager
    stored: KeyAndChain

    def serving(self) -> int:
        assert self.manager.contexts is not None
        return self.manager.contexts.serial(NAME)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    ca = IssuingCA(BASE, validity=30 * DAY)
    reactor = MemoryReactorClock()
    site = Site(ca, reactor=reactor, timeout=None)  # keeps idle connections
    net = Wiring(reactor, lambda port: site)
    spec = AcmeSpec(
        state_dir=tmp_path / "state",
        domains=(NAME,),
        directory=f"{BASE}/dir",
        challenge="http-01",
        retry=RETRY,
    )
    # A certificate 25 of its 30 days old: past 2/3 of its life, renewal due.
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    chain = ca.issue(key.public_key(), NAME, not_before=now - 25 * DAY)
    stored = KeyAndChain(key, tuple(x509.load_pem_x509_certificates(chain)))
    store = AcmeStore(spec.state_dir, spec.directory)
    store.prepare()
    store.save(NAME, stored)
    manager = CertificateManager(reactor, spec, Http01Store())
    manager.load()
    yield Setup(ca, net, manager, stored)
    manager.stop()


def test_a_due_certificate_is_renewed_and_put_in_service(setup: Setup) -> None:
    assert setup.serving() == setup.stored.serial
    setup.manager.start()
    setup.net.pump()
    assert setup.ca.orders == 1
    renewed = setup.manager.current[NAME]
    assert renewed.serial != setup.stored.serial
    assert setup.serving() == renewed.serial
    assert renewed.leaf.public_key() != setup.stored.leaf.public_key()  # a new key
    # ...and the next look is hours away: nothing more is ordered meanwhile.
    setup.net.advance(3600)
    assert setup.ca.orders == 1


def test_a_ca_that_is_down_leaves_the_certificate_in_service(setup: Setup) -> None:
    setup.ca.down = True
    setup.manager.start()
    setup.net.pump()
    assert setup.ca.orders == 1
    assert setup.serving() == setup.stored.serial  # still the stored one

    setup.net.advance(RETRY - 1)
    assert setup.ca.orders == 1  # not before the retry delay
    setup.net.advance(1)
    assert setup.ca.orders == 2
    assert setup.serving() == setup.stored.serial

    setup.ca.down = False
    setup.net.advance(2 * RETRY)  # the backoff doubles
    assert setup.ca.orders == 3
    assert setup.serving() == setup.manager.current[NAME].serial
    assert setup.serving() != setup.stored.serial
