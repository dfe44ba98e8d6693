"""Room for the engine links: a context with slots for every link's sockets and one recreation
each, and a refusal that names what is needed and what was found."""

from __future__ import annotations

import resource

import zmq

from control_service.server.capacity import (
    DESCRIPTORS_PER_LINK,
    SOCKETS_PER_LINK,
    LinkCapacity,
    link_capacity,
    link_context,
)


def test_the_context_has_slots_for_each_link_and_a_recreation_of_it() -> None:
    context = link_context(1024)
    try:
        assert context.get(zmq.MAX_SOCKETS) >= 1024 * SOCKETS_PER_LINK * 2
    finally:
        context.term()


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        capacity = link_capacity(10)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard == capacity.open_files_hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_refusal_names_the_numbers() -> None:
    capacity = LinkCapacity(
        engines=500, sockets=1500, descriptors=2256, socket_limit=65535, open_files=1024,
        open_files_hard=1024,
    )  # fmt: skip
    assert not capacity.fits
    assert capacity.reason().startswith(
        "500 engine links need 1500 ZMQ sockets and 2256 file descriptors, but this process "
        "allows 65535 sockets per ZMQ context and 1024 open files (hard limit 1024)"
    )
    assert 500 * DESCRIPTORS_PER_LINK < capacity.descriptors
