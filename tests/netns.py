"""Hosts on one machine: network namespaces joined by veth pairs, with faults on the links.

Each ``Host`` is a network namespace (``ip netns add``) with only loopback; ``Network.link(a, b)``
joins two hosts (or the test's own, root, namespace and a host) with a veth pair on a /24 of its
own in 10.231.0.0/16, so each pair of hosts has its own wire and a fault on one wire touches no
other. Processes run on a host through ``host.wrap`` (``ip netns exec``), with devstack's
scaffolding. Only addresses made here are ever used.

Faults: ``Link.cut()``/``heal()`` set both ends of a wire down/up (a cable pulled: existing TCP
connections hear nothing, new ones fail); a delay on a wire is a ``DelayLine`` (this kernel has
no ``netem`` qdisc, see docs/TESTING.md), a relay on the far host that holds every chunk for the
delay before passing it on, in order.

Everything is named ``ebsn<pid>-*``: ``close()`` deletes this run's namespaces (their veths go
with them), and a new ``Network`` first deletes those of runs whose process is gone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from devstack import ManagedProcess, free_port, wait_until

PREFIX = "ebsn"
SUPERNET = ipaddress.IPv4Network("10.231.0.0/16")
# Root-side veth names, unique for the whole run: a deleted namespace's veths go away a little
# later (the kernel frees namespaces asynchronously), so the next test must not reuse a name.
_wires = itertools.count(1)


def ip(*argv: str) -> str:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (OSError, RuntimeError) as error:
        return f"ip netns is not permitted here: {error}"
    return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _delete_namespace(ns: str) -> None:
    # Our own children from that run, if any outlived it: every process still in the namespace.
    for pid in ip("netns", "pids", ns).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def remove_stale() -> None:
    """Delete namespaces left by earlier runs of this harness whose process is gone."""
    for ns in _namespaces():
        match = re.fullmatch(rf"{PREFIX}(\d+)-.+", ns)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _delete_namespace(ns)


class Host:
    def __init__(self, network: Network, name: str) -> None:
        self.network, self.name = network, name
        self.ns = f"{network.tag}-{name}"
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        self.links: dict[str, Link] = {}

    @property
    def wrap(self) -> tuple[str, ...]:
        """Prefix for a command line that runs it on this host."""
        return ("ip", "netns", "exec", self.ns)

    def address_for(self, peer: Host | None) -> str:
        """This host's address on its wire to ``peer`` (None: the test's own namespace)."""
        return self.links[peer.name if peer else ROOT].address(self)

    def pids(self) -> list[int]:
        return [int(pid) for pid in ip("netns", "pids", self.ns).split()]

    def __repr__(self) -> str:
        return f"Host({self.name})"


ROOT = "root"  # the test process's side of a wire


class Link:
    """A veth pair between ``a`` (None: the root namespace) and ``b``: a gets .1, b gets .2."""

    def __init__(self, a: Host | None, b: Host, subnet: ipaddress.IPv4Network, root_dev: str):
        self.a, self.b = a, b
        self.subnet = subnet
        self.ends: list[tuple[Host | None, str]] = [
            (a, root_dev if a is None else f"to-{b.name}"),
            (b, f"to-{a.name if a else ROOT}"),
        ]
        (host_a, dev_a), (host_b, dev_b) = self.ends
        where_a = [] if host_a is None else ["netns", host_a.ns]
        ip("link", "add", "name", dev_a, *where_a, "type", "veth",
           "peer", "name", dev_b, "netns", b.ns)  # fmt: skip
        for n, (host, dev) in enumerate(self.ends, start=1):
            self._ip(host, "addr", "add", f"{subnet[n]}/{subnet.prefixlen}", "dev", dev)
            self._ip(host, "link", "set", dev, "up")
        if a is not None:
            a.links[b.name] = self
        b.links[a.name if a else ROOT] = self

    @staticmethod
    def _ip(host: Host | None, *argv: str) -> str:
        return ip(*argv) if host is None else ip("-n", host.ns, *argv)

    def address(self, host: Host | None) -> str:
        return str(self.subnet[1] if host is self.a else self.subnet[2])

    def cut(self) -> None:
        """Pull the cable: both ends down. Nothing crosses; no RST tells anyone."""
        for host, dev in self.ends:
            self._ip(host, "link", "set", dev, "down")

    def heal(self) -> None:
        for host, dev in self.ends:
            self._ip(host, "link", "set", dev, "up")


class Network:
    """This run's hosts and wires; ``close()`` removes them all (call it in a finalizer)."""

    def __init__(self) -> None:
        remove_stale()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hosts: list[Host] = []
        self.subnets = iter(self._free_block())

    @staticmethod
    def _free_block() -> list[ipaddress.IPv4Network]:
        """Sixteen /24s of which the root namespace uses none (another run may hold some)."""
        used = [
            ipaddress.ip_interface(addr).ip
            for addr in re.findall(r"inet (\S+)", ip("-4", "-o", "addr", "show"))
        ]
        for block in SUPERNET.subnets(new_prefix=20):
            if not any(address in block for address in used):
                return list(block.subnets(new_prefix=24))
        raise RuntimeError("no free /20 left in 10.231.0.0/16")

    def host(self, name: str) -> Host:
        host = Host(self, name)
        self.hosts.append(host)
        return host

    def link(self, a: Host | None, b: Host) -> Link:
        return Link(a, b, next(self.subnets), f"{self.tag}-{next(_wires)}")

    def close(self) -> None:
        for host in self.hosts:
            _delete_namespace(host.ns)  # its veths, root ends included, go with it
        self.hosts.clear()


# ---------------------------------------------------------------- latency on a wire


class DelayLine(ManagedProcess):
    """A TCP relay on ``host`` listening on its address ``listen`` and passing every connection
    through to ``target`` (host:port), holding each chunk ``seconds`` in each direction while
    switched on (SIGUSR1 on, SIGUSR2 off): added latency on that one path, in order, nothing
    lost. Clients reach the server through ``address``."""

    def __init__(
        self, name: str, log_dir: Path, host: Host, *, listen: str, target: str, seconds: float
    ) -> None:
        super().__init__(name, log_dir)
        self.wrap = host.wrap
        self.listen, self.port = listen, free_port()
        self.target, self.seconds = target, seconds

    @property
    def address(self) -> str:
        return f"{self.listen}:{self.port}"

    def start(self) -> DelayLine:
        argv = [sys.executable, "-m", "tests.netns", self.address, self.target, str(self.seconds)]
        self.spawn(argv, dict(os.environ))
        self.wait_for(lambda: b"listening" in self.log.read_bytes(), 30, "the delay line")
        return self

    def switch(self, on: bool) -> None:
        assert self.proc is not None
        word = b"delay on" if on else b"delay off"
        count = self.log.read_bytes().count(word)
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
        wait_until(lambda: self.log.read_bytes().count(word) > count, 10, "the delay switch")


async def _relay(listen: str, target: str, seconds: float) -> None:
    delay = [0.0]
    loop = asyncio.get_running_loop()

    def switch(on: bool) -> None:
        delay[0] = seconds if on else 0.0
        print("delay on" if on else "delay off", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, switch, True)
    loop.add_signal_handler(signal.SIGUSR2, switch, False)

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + delay[0], chunk))
        except OSError:
            pass
        queue.put_nowait((loop.time() + delay[0], b""))
        try:
            await sender
        except OSError:
            pass

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = target.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(serve, host, int(port))
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_relay(sys.argv[1], sys.argv[2], float(sys.argv[3])))
