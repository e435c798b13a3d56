"""The socket guard of conftest.py: a test that reaches another machine fails, loopback stays usable."""

import socket

import pytest

from conftest import NetworkUsedError


def test_remote_connections_and_lookups_are_refused_at_once(no_network):
    with pytest.raises(NetworkUsedError, match="look up 'huggingface.co'"):
        socket.create_connection(("huggingface.co", 443), timeout=5)
    with pytest.raises(NetworkUsedError, match="8.8.8.8"):
        socket.socket().connect(("8.8.8.8", 53))
    assert len(no_network) == 2
    no_network.clear()                      # the attempts were this test's point: don't fail it at teardown


def test_loopback_stays_usable():
    # Jupyter kernels (nbval) and torch.distributed's store talk over loopback
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()
