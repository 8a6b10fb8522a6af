"""serve_apps.ports: a loopback port outside Ray's worker ports and the kernel's ephemeral range."""

import socket

from serve_apps.ports import RAY_WORKER_PORTS_END, _ephemeral_start, free_loopback_port


def test_port_is_free_and_outside_the_ports_ray_binds():
    port = free_loopback_port()
    assert RAY_WORKER_PORTS_END < port < _ephemeral_start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_loopback_port()))
        taken = held.getsockname()[1]
        monkeypatch.setattr("serve_apps.ports.random.sample", lambda seq, k: [taken, taken + 1])
        assert free_loopback_port() == taken + 1
