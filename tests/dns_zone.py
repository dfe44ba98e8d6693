"""A small authoritative DNS server on loopback, UDP and TCP on one port (dnslib), whose records
a test changes between lookups: what the service's resolver (dnspython) talks to in the
--engines-dns tests, as it would talk to a cluster's CoreDNS (a large answer comes truncated
over UDP and is fetched again over TCP).

    with DnsZone() as zone:
        zone.set_engines("engines.test", {"vllm-0": "127.0.0.2"}, port=5560)
        ... --dns-server 127.0.0.1:{zone.port} --engines-dns engines.test:5560
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class DnsZone(BaseResolver):  # type: ignore[misc]
    """Answers A, AAAA and SRV from `records` (name -> list of RRs); NXDOMAIN for names it
    does not hold, NODATA for a type it holds none of, SERVFAIL for everything while `failing`
    (for the types in `failing_types` only: SRV, say)."""

    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        self.failing = False
        self.failing_types: set[str] = set()  # e.g. {"SRV"}: SERVFAIL for those types only
        self.queries = 0
        self.tcp_queries = 0
        self._lock = threading.Lock()
        self._server, self._tcp = self._bind_pair()

    def _bind_pair(self, attempts: int = 50) -> tuple[DNSServer, DNSServer]:
        """UDP on a free port, then TCP on the same number. The kernel picks the UDP port from
        the ephemeral range, where this machine's outgoing TCP connections (the tests' ZMQ
        links) also take theirs: the TCP bind can clash, so it tries a new pair."""
        for _ in range(attempts):
            udp = DNSServer(self, address="127.0.0.1", port=0, logger=_Quiet())
            port = int(udp.server.server_address[1])
            try:
                tcp = DNSServer(self, address="127.0.0.1", port=port, tcp=True, logger=_Quiet())
            except OSError as error:
                udp.server.server_close()
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            return udp, tcp
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP in {attempts} tries")

    @property
    def port(self) -> int:
        return int(self._server.server.server_address[1])

    def __enter__(self) -> DnsZone:
        self._server.start_thread()
        self._tcp.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._server, self._tcp):
            server.stop()
            server.server.server_close()

    def set_engines(self, name: str, engines: dict[str, str], port: int, srv: bool = True) -> None:
        """NAME's A/AAAA records are the engines' addresses; with `srv`, SRV on NAME names
        each one (target HOSTNAME.NAME, its address in the additional section), as CoreDNS
        answers for a headless Service whose pods have hostnames. An empty dict: NAME exists
        with no address (no pod ready: NODATA)."""
        records: dict[str, list[RR]] = {_key(name): []}
        for hostname, address in engines.items():
            kind, rdata = (AAAA, QTYPE.AAAA) if ":" in address else (A, QTYPE.A)
            records[_key(name)].append(RR(name, rdata, rdata=kind(address), ttl=5))
            if srv:
                target = f"{hostname}.{name}"
                records[_key(name)].append(
                    RR(name, QTYPE.SRV, rdata=SRV(0, 100, port, target), ttl=5)
                )
                records[_key(target)] = [RR(target, rdata, rdata=kind(address), ttl=5)]
        with self._lock:
            self.records = records

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname, qtype = request.q.qname, request.q.qtype
        with self._lock:
            self.queries += 1
            self.tcp_queries += handler.protocol == "tcp"
            if self.failing or QTYPE[qtype] in self.failing_types:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            held = self.records.get(_key(qname))
            records = dict(self.records)
        if held is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in held:
            if rr.rtype == qtype:
                reply.add_answer(rr)
                if qtype == QTYPE.SRV:  # the targets' addresses, as CoreDNS adds them
                    for extra in records.get(_key(rr.rdata.target), []):
                        reply.add_ar(extra)
        if handler.protocol == "udp" and len(reply.pack()) > _udp_limit(request):
            truncated = request.reply()  # the question, TC set, no records:
            truncated.header.tc = 1  # the client asks again over TCP
            return truncated
        return reply


def _udp_limit(request: DNSRecord) -> int:
    """The largest UDP answer the client takes: its EDNS payload size, else 512 bytes."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, int(rr.rclass))
    return 512


def _key(name: object) -> str:
    return str(DNSLabel(str(name))).lower().rstrip(".")


class _Quiet(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")
