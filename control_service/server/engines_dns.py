"""Engines from DNS: every A/AAAA record of a name is an engine (a Kubernetes headless Service).

`--engines-dns NAME:PORT`: each address of NAME is the engine at tcp://ADDRESS:PORT. Its name is
the pod's hostname when DNS gives one, else the address (dots kept, an IPv6 address's colons
as dashes). The hostname comes from SRV on NAME itself: Kubernetes' DNS (CoreDNS) answers it for
a headless Service with one record per ready pod and port, whose target is
`<hostname>.NAME` for a pod with a hostname (a StatefulSet's `vllm-0`) or `<dashed-ip>.NAME`
otherwise, with the targets' addresses in the additional section. Only records whose port is
PORT count, so the port name does not need to be known (`_zmq._tcp.NAME` would need it, and
gives the same records). PTR is not asked: it costs a query per pod and says nothing SRV does
not. Without SRV, names are the addresses. An SRV lookup that fails keeps the names known
from the last one (a DNS message is at most 64 KiB: SRV with its addresses fits ~1,000 pods,
A alone ~4,000), so a failure never renames an engine; a new pod is then named by address.

Re-resolved every `interval_s` and at once on SIGHUP (sources.py). A lookup that fails (timeout,
SERVFAIL, NXDOMAIN, more than MAX_ENGINES addresses) keeps the last set: a DNS outage must
not empty the fleet; it is logged once per streak of failures. An answer with no address
(NODATA: the name exists, no pod is ready) is an empty set, and calls then fail NO_ENGINES.
Answers over UDP carry up to 1,232 bytes (EDNS); a larger one is fetched again over TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import structlog

from control_service.server.config import (
    ENGINE_NAME,
    MAX_ENGINES,
    EngineConfig,
    dns_server_address,
)

log = structlog.get_logger("control_service.server.engines_dns")


class DnsFailure(Exception):
    """A lookup that says nothing about the engines: the last set stands."""


class EnginesDns:
    """Resolves NAME:PORT to engines and hands them to `apply` (Membership.update)."""

    def __init__(
        self,
        target: str,
        interval_s: float,
        apply: Callable[[list[EngineConfig]], object],
        server: str = "",
    ) -> None:
        host, _, port = target.rpartition(":")
        self.name = host.strip("[]")
        self.port = int(port)
        self.interval_s = interval_s
        self._apply = apply
        self._resolver = dns.asyncresolver.Resolver(configure=not server)
        if server:
            address, server_port = dns_server_address(server)
            self._resolver.nameservers = [address]
            self._resolver.port = server_port
        # A lookup gives up within the interval (at least 1 s, at most 5 s): the next is due.
        self._resolver.lifetime = min(max(interval_s, 1.0), 5.0)
        # EDNS: answers up to 1,232 bytes over UDP (~70 engines); larger ones come truncated and
        # dnspython asks again over TCP (a DNS message holds up to ~4,000 addresses).
        self._resolver.use_edns(0, 0, 1232)
        self._failing = False
        # address -> pod hostname, from the last SRV answer: kept while SRV fails, so that a
        # transient SRV failure never renames (removes and re-adds) the engines.
        self._names: dict[str, str] = {}
        self._srv_failing = False
        # Lookups begun, and finished (good or failed): one at a time, so a test that changes
        # the records waits for a lookup begun after the change (resolutions > lookups then).
        self.lookups = 0
        self.resolutions = 0

    async def refresh(self) -> None:
        """One lookup, applied; a failed one keeps the last set and is logged once a streak."""
        self.lookups += 1
        try:
            engines = await self.resolve()
        except DnsFailure as err:
            if not self._failing:
                log.warning("engines DNS lookup failed: keeping the engines found before",
                            name=self.name, error=str(err))  # fmt: skip
            self._failing = True
        else:
            if self._failing:
                log.info("engines DNS lookup answers again", name=self.name, engines=len(engines))
            self._failing = False
            self._apply(engines)
        self.resolutions += 1

    async def resolve(self) -> list[EngineConfig]:
        """The engines NAME's records describe now, sorted by name (DnsFailure if unknown)."""
        v4, v6, srv = await asyncio.gather(
            self._query("A"), self._query("AAAA"), self._query("SRV"), return_exceptions=True
        )
        for answer in (v4, v6):
            if isinstance(answer, BaseException):
                raise DnsFailure(_describe(answer))
        assert isinstance(v4, dns.resolver.Answer) and isinstance(v6, dns.resolver.Answer)
        addresses = [r.address for a in (v4, v6) if a.rrset is not None for r in a.rrset]
        if len(addresses) > MAX_ENGINES:
            raise DnsFailure(f"{len(addresses)} addresses, more than {MAX_ENGINES} engines")
        if isinstance(srv, dns.resolver.Answer):
            self._srv_failing = False
            self._names = self._hostnames(srv)
        elif not self._srv_failing:  # e.g. an SRV answer past DNS's 64 KiB (~1,000 pods)
            self._srv_failing = True
            log.warning("engines DNS: SRV lookup failed; engines keep the names they had, new "
                        "ones are named by address", name=self.name,
                        error=_describe(srv))  # fmt: skip
        # The names of addresses still present only: bounded by the answer.
        self._names = {a: self._names[a] for a in addresses if a in self._names}
        return _engines(addresses, self._names, self.port)

    async def _query(self, rdtype: str) -> dns.resolver.Answer:
        return await self._resolver.resolve(self.name, rdtype, raise_on_no_answer=False)

    def _hostnames(self, srv: dns.resolver.Answer) -> dict[str, str]:
        """address -> hostname, from the SRV records for PORT and the targets' addresses in
        the same response's additional section."""
        targets = {r.target for r in srv.rrset or () if r.port == self.port}
        hostnames: dict[str, str] = {}
        for rrset in srv.response.additional:
            if rrset.name in targets and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                label = rrset.name.labels[0].decode("ascii", "replace").lower()
                for record in rrset:
                    hostnames[record.address] = label
        return hostnames


def _engines(addresses: list[str], hostnames: dict[str, str], port: int) -> list[EngineConfig]:
    """One engine per distinct address, named by its hostname when that is a valid, unique
    engine name, else by the address."""
    unique = list(dict.fromkeys(addresses))
    wanted = [hostnames.get(a, "") for a in unique]
    claims = Counter(wanted)
    engines = []
    for address, hostname in zip(unique, wanted, strict=True):
        ok = ENGINE_NAME.match(hostname) is not None and claims[hostname] == 1
        name = hostname if ok else address.replace(":", "-")
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        engines.append(EngineConfig(name, f"tcp://{host}:{port}"))
    return sorted(engines, key=lambda e: e.name)


def _describe(error: BaseException) -> str:
    if isinstance(error, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(error, dns.exception.Timeout):
        return "no answer in time"
    return f"{type(error).__name__}: {error}"
