"""A two-host testbed on one machine: network namespaces ``site`` and ``cloud`` joined by a veth
pair, with the site's uplink (site → cloud) shaped by ``tc``.

::

    [ site ns ]  veth-s 10.77.0.1/30  ───────  10.77.0.2/30 veth-c  [ cloud ns ]
                 egress: tbf rate R (the uplink)           egress: unshaped (downlink)

This kernel has ``tbf`` and ``htb`` but no ``netem`` (docs FACTS), so bandwidth is capped with
``tbf``; latency, when a test needs it, comes from :class:`tests.support.relay.DelayRelay`.

Code runs "on a host" by entering its namespace on the current thread (``setns(2)``):
``with bed.inside("site"): ...`` — sockets opened there and processes started there belong to
that namespace; the thread's own namespace is restored on exit. :func:`in_namespace` runs a
function on a fresh thread inside a namespace (e.g. an asyncio loop for a robot).

Namespace names carry the process id and a random suffix, so parallel runs never collide, and
:meth:`NetBed.close` deletes them (their veth ends go with them) even after a failure. Needs
root and ``ip``/``tc``; :func:`unavailable` says why not, for ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SITE_IP = "10.77.0.1"
CLOUD_IP = "10.77.0.2"
_libc = ctypes.CDLL(None, use_errno=True)


class NetBedError(RuntimeError):
    """A namespace, link or qdisc could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetBedError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why a testbed cannot be built here (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    name = f"vlbprobe{os.getpid()}{secrets.token_hex(2)}"
    done = _ip("netns", "add", name, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NetBedError(f"no network namespace at {path}: {exc}") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetBedError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """The current thread inside network namespace ``netns`` (by name), restored on exit."""
    own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    back = os.open(own, os.O_RDONLY)
    try:
        _setns(f"/run/netns/{netns}")
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:  # pragma: no cover - would be a kernel bug
                raise NetBedError("cannot return to the thread's own network namespace")
    finally:
        os.close(back)


def in_namespace(netns: str, fn: Callable[[], T], *, name: str = "netns") -> T:
    """Run ``fn`` on a new thread inside ``netns`` and return its result (or raise its error)."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            with entered(netns):
                box["result"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


@dataclass
class NetBed:
    """Two namespaces and the link between them; build with :func:`open_netbed`."""

    site: str
    cloud: str
    site_dev: str
    cloud_dev: str
    site_ip: str = SITE_IP
    cloud_ip: str = CLOUD_IP
    uplink_mbit: float | None = None
    _closed: bool = field(default=False, repr=False)

    def namespace(self, host: str) -> str:
        """The namespace name of ``host`` ("site" or "cloud")."""
        if host not in ("site", "cloud"):
            raise ValueError(f"host is 'site' or 'cloud', not {host!r}")
        return self.site if host == "site" else self.cloud

    def inside(self, host: str) -> contextlib.AbstractContextManager[None]:
        """``with bed.inside("cloud"): ...`` runs the block's sockets and processes there."""
        return entered(self.namespace(host))

    def run(self, host: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a fresh thread inside ``host``'s namespace; its result."""
        return in_namespace(self.namespace(host), fn, name=f"netbed-{host}")

    def shape(self, mbit: float, *, queue_ms: float = 100.0) -> None:
        """Cap the site uplink at ``mbit`` Mbit/s (tbf on the site end's egress), with a queue
        of ``queue_ms`` at that rate before packets drop (like a modem's buffer)."""
        rate = int(mbit * 1e6)
        burst = max(16_000, rate // 8 // 100)  # >= 10 ms at the rate: tbf needs rate/HZ or more
        limit = max(burst + 3000, int(rate / 8 * queue_ms / 1000))
        tc = ["tc", "qdisc", "replace", "dev", self.site_dev, "root", "tbf", "rate",
              f"{rate}bit", "burst", str(burst), "limit", str(limit)]
        done = subprocess.run(["ip", "netns", "exec", self.site, *tc],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NetBedError(f"{' '.join(tc)}: {done.stderr.strip()}")
        self.uplink_mbit = mbit

    def unshape(self) -> None:
        """Remove the uplink cap."""
        subprocess.run(["ip", "netns", "exec", self.site, "tc", "qdisc", "del", "dev",
                        self.site_dev, "root"], capture_output=True, check=False)
        self.uplink_mbit = None

    def uplink_bytes(self) -> int:
        """Bytes sent so far on the site end of the link (everything the uplink carried)."""
        done = _ip("-n", self.site, "-s", "-j", "link", "show", "dev", self.site_dev)
        return int(json.loads(done.stdout)[0]["stats64"]["tx"]["bytes"])

    def cut(self) -> None:
        """Take the link down (a failed uplink); :meth:`restore` brings it back."""
        _ip("-n", self.site, "link", "set", self.site_dev, "down")

    def restore(self) -> None:
        _ip("-n", self.site, "link", "set", self.site_dev, "up")

    def close(self) -> None:
        """Delete both namespaces (and so the link); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for name in (self.site, self.cloud):
            _ip("netns", "del", name, check=False)


def open_netbed(*, uplink_mbit: float | None = None) -> NetBed:
    """Create ``site`` and ``cloud`` namespaces joined by a veth pair (uniquely named)."""
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    site, cloud = f"vlb-site-{tag}", f"vlb-cloud-{tag}"
    site_dev, cloud_dev = f"vs{tag}", f"vc{tag}"  # interface names: 15 characters at most
    bed = NetBed(site, cloud, site_dev, cloud_dev)
    try:
        _ip("netns", "add", site)
        _ip("netns", "add", cloud)
        _ip("link", "add", site_dev, "netns", site, "type", "veth", "peer", "name", cloud_dev,
            "netns", cloud)
        for ns, dev, addr in ((site, site_dev, SITE_IP), (cloud, cloud_dev, CLOUD_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        if uplink_mbit is not None:
            bed.shape(uplink_mbit)
    except BaseException:
        bed.close()
        raise
    return bed


@pytest.fixture
def netbed() -> Iterator[NetBed]:
    """A fresh two-namespace testbed (unshaped); skipped with the reason where it cannot run."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    bed = open_netbed()
    try:
        yield bed
    finally:
        bed.close()
