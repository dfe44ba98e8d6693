"""Room for the engine links: libzmq's socket limit and the process's open-file limit.

Each engine link holds 3 ZMQ sockets (its DEALER, the PAIR libzmq binds to publish the DEALER's
monitor events, and the PAIR we read them from) and 4 file descriptors (a mailbox eventfd per
socket and the TCP connection). libzmq refuses a context's socket number 1,024 by default
(`zmq.MAX_SOCKETS`), and a process often starts with a soft limit of 1,024 open files: either one
stops a service of a few hundred engines with `Too many open files` from deep inside pyzmq. So
the context is sized for the engines configured, the soft RLIMIT_NOFILE is raised to the hard
limit at start (as Go's runtime does), and what still cannot fit is a configuration error that
says what is needed and what was found, before any socket exists.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import zmq

from control_service.server.config import ConfigError

SOCKETS_PER_LINK = 3
# A link that recreates its socket (after a loss) opens the new sockets before libzmq's reaper has
# freed the old ones' slots: room for one recreation per link at once. Slots cost nothing until
# used; without them a mass reconnect fails with EMFILE ("Too many open files") from the context.
SOCKET_SLOTS_PER_LINK = 2 * SOCKETS_PER_LINK
DESCRIPTORS_PER_LINK = 4
# Descriptors the rest of the process holds: the interpreter, gRPC's threads and listeners,
# the event loop, logs, the metrics server, the callers' connections (measured: ~30 at rest).
RESERVED_DESCRIPTORS = 256
# libzmq's own default: a context never gets fewer sockets than a plain zmq.Context() would.
_MIN_SOCKETS = 1023


@dataclass(frozen=True, slots=True)
class LinkCapacity:
    """What `engines` links need and what this process allows."""

    engines: int
    sockets: int  # ZMQ sockets the links need
    descriptors: int  # open files the whole service needs
    socket_limit: int  # the most sockets libzmq allows a context (zmq.SOCKET_LIMIT)
    open_files: int  # the soft RLIMIT_NOFILE, after raising it
    open_files_hard: int

    @property
    def fits(self) -> bool:
        return self.sockets <= self.socket_limit and self.descriptors <= self.open_files

    def reason(self) -> str:
        """One line for an operator: the numbers needed, the limits found, what to change."""
        return (
            f"{self.engines} engine links need {self.sockets} ZMQ sockets and "
            f"{self.descriptors} file descriptors, but this process allows "
            f"{self.socket_limit} sockets per ZMQ context and {self.open_files} open files "
            f"(hard limit {_limit(self.open_files_hard)}): raise the open-files limit "
            f"(ulimit -n, LimitNOFILE) or configure fewer engines"
        )


def link_capacity(engines: int) -> LinkCapacity:
    """Raise the soft open-files limit as far as the hard limit allows; report what fits."""
    soft, hard = _raise_open_files()
    with zmq.Context() as probe:  # a context makes no socket and no thread until used
        socket_limit = int(probe.get(zmq.SOCKET_LIMIT))
    return LinkCapacity(
        engines=engines,
        sockets=engines * SOCKETS_PER_LINK,
        descriptors=engines * DESCRIPTORS_PER_LINK + RESERVED_DESCRIPTORS,
        socket_limit=socket_limit,
        open_files=soft,
        open_files_hard=hard,
    )


def link_room(most: int) -> int:
    """How many links this process can hold, up to `most`: the room a fleet that grows at run
    time (engines file, DNS) gets; an engine past it is not added (and is logged)."""
    capacity = link_capacity(most)
    by_sockets = capacity.socket_limit // SOCKETS_PER_LINK
    by_files = (capacity.open_files - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_LINK
    return max(0, min(most, by_sockets, by_files))


def link_context(engines: int) -> zmq.Context:
    """A ZMQ context with room for `engines` links; a configuration error (INVALID_ARGUMENT
    ControlError) naming the numbers when this process cannot hold them."""
    capacity = link_capacity(engines)
    if not capacity.fits:
        raise ConfigError(capacity.reason())
    context = zmq.Context()
    slots = min(capacity.socket_limit, capacity.engines * SOCKET_SLOTS_PER_LINK)
    context.set(zmq.MAX_SOCKETS, max(_MIN_SOCKETS, slots))
    return context


def _raise_open_files() -> tuple[int, int]:
    """The soft limit raised to the hard one (the soft limit is only a default for programs that
    use select(); nothing here does); returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS: an unlimited hard limit is not settable
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft), hard


def _finite(limit: int) -> int:
    return 1 << 31 if limit == resource.RLIM_INFINITY else limit


def _limit(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
