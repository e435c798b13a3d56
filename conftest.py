"""pytest configuration shared by the unit tests and nbval's notebook runs."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest

_notebook_seconds: dict[str, float] = defaultdict(float)


class NetworkUsedError(RuntimeError):
    """A test tried to reach another machine: the course runs offline, and so must its tests."""


def _is_local(address) -> bool:
    """Loopback, Unix sockets and unnamed addresses are this machine (Jupyter kernels, torch.distributed)."""
    if not isinstance(address, tuple):
        return True                                    # AF_UNIX path, or a raw address we cannot judge
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False                                   # a host name: resolving it is already network use


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that connects to, or looks up, another machine.

    The attempt raises at once (instead of waiting for a timeout), and the test fails at teardown even when a
    library caught the error and carried on (transformers turns it into "can't load the configuration").
    Offline libraries that wait for the network would otherwise make a test slow, or pass on a machine with
    network and fail on one without.
    """
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(what: str):
        attempts.append(what)
        return NetworkUsedError(f"a test tried to {what}: tests must run offline")

    def connect(sock, address):
        if not _is_local(address):
            raise refuse(f"connect to {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local((host,)):
            raise refuse(f"look up {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    if attempts:
        pytest.fail(f"the test used the network ({'; '.join(attempts)}); tests must run offline", pytrace=False)


class EpochCounter:
    """Counts the epochs ``tl_helpers.train.train_one_epoch`` trains; the ``stop_at``-th call raises
    KeyboardInterrupt, as Ctrl-C in the middle of that epoch would (``None``: never)."""

    def __init__(self, monkeypatch):
        import tl_helpers.train as train

        self.calls, self.stop_at, real = 0, None, train.train_one_epoch

        def counted(*args, **kwargs):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(train, "train_one_epoch", counted)


@pytest.fixture
def epochs(monkeypatch) -> EpochCounter:
    """An interruptible epoch counter around the training loop (tests of resuming)."""
    return EpochCounter(monkeypatch)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): tiny
    models train no faster on two, and on a busy machine OpenMP threads spin-waiting made them 5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collectstart(collector):
    """nbval: never compare stderr (warnings carry machine-specific paths and timings)."""
    if collector.fspath and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)


def pytest_runtest_setup(item):
    item._tl_start = time.perf_counter()


def pytest_runtest_teardown(item):
    start = getattr(item, "_tl_start", None)
    if start is not None and str(item.fspath).endswith(".ipynb"):
        _notebook_seconds[Path(str(item.fspath)).name] += time.perf_counter() - start


def pytest_terminal_summary(terminalreporter):
    """Print each notebook's total execution time (the 2-minute laptop budget is per notebook)."""
    if _notebook_seconds:
        terminalreporter.section("notebook run times")
        for name, seconds in sorted(_notebook_seconds.items()):
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
