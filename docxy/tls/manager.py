"""Keeps one certificate per configured name valid, for as long as Docxy runs.

One loop per name: serve what is stored (or the placeholder), issue when
there is nothing usable, sleep until renewal is due (ARI's window if the
CA offers it, else two thirds of the lifetime), renew, swap the new
certificate into the listener. Any failure is logged with what is still
being served and retried with backoff; nothing here can stop the daemon.
Only configured names are ever ordered: a client's SNI name is never a
reason to talk to the CA.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from .acme import AcmeClient, AcmeError, AcmeServerError, make_http
from .certs import KeyAndChain, alpn_challenge, make_csr, new_key, placeholder
from .contexts import SniContexts
from .http01 import HTTP01, Http01Store
from .renewal import ari_cert_id, lifetime_renewal, next_check, retry_delay
from .shared import PublishedChallenges
from .spec import AcmeSpec
from .store import AcmeStore

log = Logger(namespace="docxy.acme")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateManager:
    """Keeps every configured name's certificate valid and in the listener.

    Failures are logged and retried with backoff; they never stop the
    daemon, and only configured names are ever ordered.
    """

    def __init__(
        self,
        reactor: Any,
        spec: AcmeSpec,
        http01: Http01Store = HTTP01,
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.spec = spec
        self.http01 = http01
        self.rng = rng or random.Random()
        self.store = AcmeStore(spec.state_dir, spec.directory)
        # For workers (docxy.tls.shared); the manager itself serves from memory.
        self.published = PublishedChallenges(spec.state_dir)
        self.current: dict[str, KeyAndChain] = {}
        self.contexts: SniContexts | None = None
        self._client: AcmeClient | None = None
        self._pool: HTTPConnectionPool | None = None
        self._lock = defer.DeferredLock()
        self._loops: list[defer.Deferred[None]] = []
        self._ari_picks: dict[
            tuple[int, datetime.datetime, datetime.datetime], datetime.datetime
        ] = {}

    def load(self) -> SniContexts:
        """Synchronously, before listening: stored certificates or the placeholder."""
        self.store.prepare()
        self.published.clear()
        self.contexts = SniContexts(self.spec.domains, placeholder(self.spec.domains))
        for name in self.spec.domains:
            stored = self.store.load(name)
            if stored is None:
                log.info(
                    "no certificate for {name} yet: serving a self-signed "
                    "placeholder until {directory} issues one",
                    name=name,
                    directory=self.spec.directory,
                )
                continue
            self._serve(name, stored, "serving the stored certificate")
        return self.contexts

    def _serve(self, name: str, cert: KeyAndChain, what: str) -> None:
        """Put ``cert`` in service for ``name`` on the running listeners."""
        self.current[name] = cert
        assert self.contexts is not None
        self.contexts.install(name, cert)
        log.info(
            "{what} for {name} (serial {serial:x}, valid until {until})",
            what=what,
            name=name,
            serial=cert.serial,
            until=cert.leaf.not_valid_after_utc.isoformat(),
        )

    def start(self) -> None:
        if self._loops:
            return
        for name in self.spec.domains:
            loop = defer.ensureDeferred(self._keep(name))
            loop.addErrback(lambda f: f.trap(defer.CancelledError))
            self._loops.append(loop)

    def stop(self) -> defer.Deferred[Any]:
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        if self._pool is not None:
            closed: defer.Deferred[Any] = self._pool.closeCachedConnections()
            return closed
        return defer.succeed(None)

    # --- the loop -------------------------------------------------------------

    async def _keep(self, name: str) -> None:
        failures = 0
        just_issued = False
        while True:
            try:
                current = self.current.get(name)
                if current is not None and not current.expired(_now()):
                    due = await self._due(current)
                    delay = next_check(due, _now())
                    if delay <= 0 and just_issued:
                        # A CA handing out certificates already due must not
                        # make Docxy order in a tight loop.
                        delay = self.spec.retry
                    just_issued = False
                    if delay > 0:
                        log.info(
                            "certificate for {name} (serial {serial:x}) is good; "
                            "renewal due {due}",
                            name=name,
                            serial=current.serial,
                            due=due.isoformat(timespec="seconds"),
                        )
                        await task.deferLater(self.reactor, delay)
                        continue
                await self._issue(name, current)
                failures = 0
                just_issued = True
            except defer.CancelledError:
                raise
            except Exception as e:
                failures += 1
                hint = e.retry_after if isinstance(e, AcmeError) else None
                delay = retry_delay(failures, self.spec.retry, hint)
                self._log_failure(name, e, delay)
                await task.deferLater(self.reactor, delay)

    def _log_failure(self, name: str, error: Exception, delay: float) -> None:
        current = self.current.get(name)
        if current is None:
            serving = "the self-signed placeholder"
        else:
            serving = (
                f"the current certificate (serial {current.serial:x}, valid until "
                f"{current.leaf.not_valid_after_utc.isoformat()})"
            )
        reason = describe(error)
        log.error(
            "ACME: no certificate for {name} from {directory}: {reason}; still "
            "serving {serving}; next try in {delay:.0f}s",
            name=name,
            directory=self.spec.directory,
            reason=reason,
            serving=serving,
            delay=delay,
        )

    async def _due(self, current: KeyAndChain) -> datetime.datetime:
        """When to renew: ARI if the CA offers it and answers, else 2/3 of life."""
        try:
            window = await (await self._acme()).renewal_window(current.leaf)
        except defer.CancelledError:
            raise
        except Exception as e:
            log.debug(
                "no renewal info ({reason}); renewing at 2/3 of the lifetime", reason=e
            )
            window = None
        if window is None:
            return lifetime_renewal(current.leaf)
        key = (current.serial, window.start, window.end)
        if key not in self._ari_picks:
            self._ari_picks[key] = window.pick(self.rng)
        return self._ari_picks[key]

    # --- issuing ---------------------------------------------------------------

    async def _acme(self) -> AcmeClient:
        if self._client is None:
            http, self._pool = make_http(self.reactor, self.spec.ca_bundle)
            self._client = AcmeClient(
                self.reactor, http, self.spec.directory, self.store.account_key()
            )
        return self._client

    async def _issue(self, name: str, current: KeyAndChain | None) -> None:
        # One order at a time: one nonce stream, and the CA sees a calm client.
        await self._lock.acquire()
        try:
            await self._issue_locked(name, current)
        finally:
            self._lock.release()

    async def _issue_locked(self, name: str, current: KeyAndChain | None) -> None:
        client = await self._acme()
        await client.register(self.spec.email)
        log.info("ACME: ordering a certificate for {name}", name=name)
        replaces = None
        if current is not None and "renewalInfo" in await client.directory():
            try:
                replaces = ari_cert_id(current.leaf)
            except (ValueError, LookupError):
                replaces = None
        try:
            order_url, order = await client.new_order([name], replaces)
        except AcmeServerError:
            if replaces is None:
                raise
            # The CA may not know the old certificate (another CA issued it).
            order_url, order = await client.new_order([name])
        for authz_url in order.get("authorizations", []):
            await self._authorize(client, name, authz_url)
        order = await client.poll(order_url, {"ready", "valid", "invalid"})
        if order["status"] == "invalid":
            raise AcmeError(f"the order for {name} became invalid")
        key = new_key()
        if order["status"] == "ready":
            await client.finalize(order, make_csr(key, [name]))
            order = await client.poll(order_url, {"valid", "invalid"})
        if order["status"] != "valid" or not isinstance(order.get("certificate"), str):
            raise AcmeError(f"the order for {name} ended {order['status']!r}")
        chain = await client.certificate(order["certificate"])
        issued = KeyAndChain(key, tuple(chain))
        if issued.leaf.public_key() != key.public_key() or not issued.covers(name):
            raise AcmeError(
                f"the CA returned a certificate that is not ours for {name}"
            )
        self.store.save(name, issued)
        self._serve(name, issued, "ACME: new certificate in service")

    async def _authorize(self, client: AcmeClient, name: str, url: str) -> None:
        authz = await client.get(url)
        identifier = authz.get("identifier", {}).get("value")
        if identifier != name:
            raise AcmeError(f"the CA asked to authorize {identifier!r}, not {name!r}")
        if authz.get("status") == "valid":
            return
        if authz.get("status") != "pending":
            raise AcmeError(f"the authorization for {name} is {authz.get('status')!r}")
        kind = self.spec.challenge
        offered = [c for c in authz.get("challenges", []) if c.get("type") == kind]
        if not offered:
            types = ", ".join(str(c.get("type")) for c in authz.get("challenges", []))
            raise AcmeError(
                f"the CA offers no {kind} challenge for {name} (only {types})"
            )
        challenge = offered[0]
        token = str(challenge["token"])
        key_authorization = client.key_authorization(token)
        assert self.contexts is not None
        # Published first: a worker may be the one the CA's validation reaches.
        if kind == "http-01":
            self.published.add_token(token, key_authorization)
            self.http01.add(token, key_authorization)
        else:
            pair = alpn_challenge(name, key_authorization)
            self.published.add_alpn(name, pair)
            self.contexts.set_challenge(name, pair)
        try:
            await client.respond(challenge["url"])
            authz = await client.poll(
                url, {"valid", "invalid", "deactivated", "revoked", "expired"}
            )
        finally:
            if kind == "http-01":
                self.http01.remove(token)
                self.published.remove_token(token)
            else:
                self.contexts.clear_challenge(name)
                self.published.remove_alpn(name)
        if authz.get("status") != "valid":
            raise AcmeError(
                f"{kind} validation of {name} failed: {_challenge_error(authz)}"
            )


def describe(error: BaseException) -> str:
    """One line for the log: the CA's words, or what the network said."""
    if isinstance(error, AcmeError):
        return str(error)
    reasons = getattr(error, "reasons", None)  # ResponseFailed and friends
    if reasons:
        inner = "; ".join(
            r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons
        )
        return f"{type(error).__name__}: {inner}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _challenge_error(authz: dict[str, Any]) -> str:
    for challenge in authz.get("challenges", []):
        error = challenge.get("error")
        if isinstance(error, dict):
            return str(error.get("detail") or error.get("type"))[:300]
    return f"authorization {authz.get('status')!r}"
