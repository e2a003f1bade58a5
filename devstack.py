"""Process scaffolding for running the service's real processes from Python: free ports, children
in their own process groups logging to files, wait loops, a database rebuilt by Alembic, and the
uvicorn, Celery worker, beat and private redis-server command lines.

The tests (``tests/conftest.py``, ``tests/test_faults.py``) and the benchmark (``bench/stack.py``)
both start the system this way, so there is one copy of it, here.

Why a top-level module: both import it from the repository root (pytest's ``pythonpath = ["."]``,
``python -m bench.flash_sale`` run from the root), and it imports neither ``tests`` nor ``bench``.
It is not part of ``common/`` because no process of the service uses it, and it is not shipped:
the wheel holds ``api``, ``worker``, ``common`` and ``celeryconfig`` only (pyproject.toml).

Nothing here picks a database or a Redis db: the caller passes the environment its children get,
and the caller's guards (the tests' forced settings, the benchmark's ``check_targets``) decide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# uvicorn's httptools protocol with a deadline for request headers (api/protocol.py).
HTTP_PROTOCOL = "api.protocol:HttpProtocol"


def ws_max_size(env: dict[str, str]) -> str:
    """``WS_MAX_SIZE`` as an API started with ``env`` reads it: uvicorn, not the app, enforces
    it, so the command line must carry it."""
    from common.settings import Settings

    return env.get("WS_MAX_SIZE") or str(Settings.model_fields["WS_MAX_SIZE"].default)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``check()`` is truthy. The bound only keeps a broken run from hanging; it is
    generous on purpose and no test asserts on how long anything took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- the database


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def recreate_database(url: str) -> None:
    """Drop (forcing out its sessions) and create the database named by ``url``."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def upgrade_database(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


# ---------------------------------------------------------------- processes


class ManagedProcess:
    """A real child process (its own process group) logging to ``log_dir/<name>.log``; stopped
    by its own pid or process group only, never by name.

    ``wrap`` goes before the command line: ``netns_exec(ns)`` runs the child on another
    (network-namespace) host. It must exec, not fork, so the child's pid is the server's."""

    wrap: tuple[str, ...] = ()

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log_dir / f"{name}.log"
        self._logfile: IO[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logfile = self.log.open("wb")
        self.proc = subprocess.Popen(
            [*self.wrap, *argv],
            cwd=ROOT,
            env=env,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """``wait_until``, but give up at once, pointing at the log, if the child has exited."""

        def ready() -> Any:
            if not self.running:
                raise RuntimeError(f"{what} exited; see {self.log}")
            return check()

        return wait_until(ready, timeout, what)

    def stop(self, sig: int | None = None) -> None:
        """Terminate gracefully, or send ``sig`` (e.g. 9) to the whole process group."""
        if self.proc is None:
            return
        try:
            if sig is not None:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.terminate()
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        self.proc = None
        if self._logfile is not None:
            self._logfile.close()


class WorkerProcess(ManagedProcess):
    """A real ``celery worker``; ``launch`` starts it, ``wait_ready`` waits for "ready."."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        env: dict[str, str],
        *,
        concurrency: int = 2,
        queues: str = "bookings,maintenance",
        hostname: str | None = None,
        nice: int = 0,
    ) -> None:
        super().__init__(name, log_dir)
        self.env = env
        self.concurrency = concurrency
        self.queues = queues
        self.hostname = hostname or f"{name}@%h"
        self.nice = nice

    def launch(self) -> Self:
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        argv = [*prefix, str(BIN / "celery"), "-A", "worker.app", "worker", "-Q", self.queues,
                "--concurrency", str(self.concurrency), "--hostname", self.hostname,
                "--loglevel", "INFO", "--without-mingle", "--without-gossip"]  # fmt: skip
        self.spawn(argv, self.env)
        return self

    def wait_ready(self, timeout: float = 60) -> Self:
        self.wait_for(lambda: b"ready." in self.log.read_bytes(), timeout, f"worker {self.name}")
        return self

    def start(self) -> Self:
        return self.launch().wait_ready()


class BeatProcess(ManagedProcess):
    """A real ``celery beat`` (the sweeper's schedule), its schedule file beside its log."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str]) -> None:
        super().__init__(name, log_dir)
        self.env = env

    def start(self) -> Self:
        schedule = self.log.parent / f"{self.name}-schedule"
        argv = [str(BIN / "celery"), "-A", "worker.app", "beat", "--schedule", str(schedule),
                "--loglevel", "INFO"]  # fmt: skip
        self.spawn(argv, self.env)
        self.wait_for(lambda: b"beat: Starting" in self.log.read_bytes(), 60, "beat")
        return self


class ApiProcess(ManagedProcess):
    """A real ``uvicorn`` serving the app on a free port; ``start`` waits for /health."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        env: dict[str, str],
        *,
        workers: int | None = None,
        access_log: bool = True,
        host: str = "127.0.0.1",
        app: str = "api.main:app",
    ) -> None:
        super().__init__(name, log_dir)
        self.host = host
        self.app = app
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.access_log = access_log

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = [str(BIN / "uvicorn"), self.app, "--host", self.host,
                "--port", str(self.port), "--log-level", "warning",
                "--http", HTTP_PROTOCOL, "--ws-max-size", ws_max_size(self.env)]  # fmt: skip
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        if not self.access_log:
            argv.append("--no-access-log")
        return argv

    def start(self) -> Self:
        import httpx

        self.spawn(self.argv(), self.env)

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self.wait_for(up, 60, f"api {self.name}")
        return self


class RedisServer:
    """A private redis-server on a free port that keeps nothing on disk, so a restart loses
    everything, and killing it touches nobody else's Redis."""

    def __init__(
        self, host: str = "127.0.0.1", *, bind: str | None = None, wrap: tuple[str, ...] = ()
    ) -> None:
        """``host``: the address the test reaches it at; ``bind``: the addresses it listens on
        (``host`` by default); ``wrap``: see ManagedProcess."""
        self.host, self.bind, self.wrap = host, bind or host, wrap
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ebs-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Self:
        server = shutil.which("redis-server") or "redis-server"
        argv = [*self.wrap, server, "--port", str(self.port),
                "--bind", *self.bind.split(), "--protected-mode", "no", "--save", "",
                "--appendonly", "no",
                "--dir", self.dir, "--logfile", ""]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                with redis.Redis(self.host, self.port, socket_timeout=1) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 30, "private redis")
        return self

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitVhost:
    """A RabbitMQ virtual host of its own on the broker of ``base_url`` (``amqp://user:pw@host:
    port/``), made empty with ``rabbitmqctl`` and deleted on ``close``: its queues are nobody
    else's, as a Redis db number or a private redis-server gives with the Redis broker."""

    def __init__(self, base_url: str, name: str) -> None:
        self.base = base_url.rstrip("/")
        self.name = name
        self.user = make_url(base_url.replace("amqp://", "postgresql://", 1)).username or "guest"

    @property
    def url(self) -> str:
        return f"{self.base}/{self.name}"

    def _ctl(self, *args: str, check: bool = True) -> None:
        ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
        subprocess.run([ctl, "-q", *args], check=check, capture_output=True)

    def start(self) -> Self:
        self._ctl("delete_vhost", self.name, check=False)  # what an earlier run left queued
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        return self

    def close(self) -> None:
        self._ctl("delete_vhost", self.name, check=False)


class PostgresServer(ManagedProcess):
    """A private PostgreSQL cluster in a temporary directory (trust authentication), so
    stopping, freezing or restarting it touches nobody else's database.

    It listens on ``listen`` (``host`` by default; ``""``: the socket only) at ``port`` and on a
    socket in its own directory; ``url`` reaches it over TCP at ``host``, ``socket_url`` through
    the socket, which works from this (root) namespace whatever ``wrap`` and the network do.
    ``trust`` (a CIDR) is added to pg_hba.conf for clients on other hosts. ``initdb(template)``
    copies an already built data directory instead of running initdb again.

    PostgreSQL refuses to run as root: when this process is root, its commands run as the
    ``owner`` OS user through ``setpriv``, which execs. Not ``runuser`` or ``su``: they stay as
    the parent and stop themselves when their child is stopped, so a frozen server's parent
    would never reap it. Exec'ing (``wrap`` execs too) also makes the pid held the postmaster's.

    ``freeze`` (SIGSTOP) stops the postmaster and every backend: connections stay open and
    accepted, and nothing answers, as on a hung host. ``close`` always leaves nothing behind.
    """

    def __init__(
        self,
        name: str = "postgres",
        log_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        listen: str | None = None,
        port: int | None = None,
        trust: str | None = None,
        owner: str = "postgres",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ebs-pg-"))
        super().__init__(name, log_dir or self.dir)
        self.host, self.port, self.trust, self.owner = host, port or free_port(), trust, owner
        self.listen = host if listen is None else listen
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@/{database}?host={self.sockets}&port={self.port}"

    def _as_owner(self, *argv: str) -> list[str]:
        binary = shutil.which(argv[0]) or argv[0]
        if os.geteuid() != 0:
            return [binary, *argv[1:]]
        user = self.owner
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", binary, *argv[1:]]

    def initdb(self, template: Path | None = None) -> Self:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.owner, self.owner)
        if template is not None:
            shutil.copytree(template, self.data, symlinks=True)
        else:
            argv = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                    "-E", "UTF8"]  # fmt: skip
            subprocess.run(self._as_owner(*argv), check=True, capture_output=True, cwd=self.dir)
        hba = self.data / "pg_hba.conf"
        line = f"host all all {self.trust} trust\n"
        if self.trust and line not in hba.read_text():
            with hba.open("a") as conf:
                conf.write(line)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", f"{self.owner}:{self.owner}", str(self.dir)], check=True)
        return self

    def start(self) -> Self:
        """Start (initdb on first start) and wait until it takes connections."""
        if not self.data.exists():
            self.initdb()
        # fsync and full-page writes only guard against an OS crash; commits stay synchronous,
        # so a server stopped immediately or killed keeps what it acknowledged.
        argv = self._as_owner(
            "postgres", "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets),
            "-c", f"listen_addresses={self.listen}", "-c", "fsync=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300",
        )  # fmt: skip
        self.spawn(argv, dict(os.environ))

        def up() -> bool:
            probe = create_engine(self.socket_url(), connect_args={"connect_timeout": 2})
            try:
                with probe.connect() as conn:
                    return conn.execute(text("SELECT 1")).scalar() == 1
            except Exception:
                return False
            finally:
                probe.dispose()

        self.wait_for(up, 60, f"postgres {self.name}")
        return self

    def create_database(self, name: str) -> str:
        """A database built by the migrations; returns its URL."""
        url = self.url(name)
        recreate_database(url)
        upgrade_database(url)
        return url

    def _processes(self) -> list[int]:
        """The postmaster and its children. Each backend is its own process group (PostgreSQL
        calls setsid in every child), so they are found by parent, not signalled by group."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        postmaster = self.proc.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def _signal(self, sig: int, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, sig)

    def freeze(self) -> None:
        """SIGSTOP the server (the postmaster first, so it forks nothing meanwhile)."""
        self._signal(signal.SIGSTOP, self._processes())

    def thaw(self) -> None:
        self._signal(signal.SIGCONT, self._processes()[::-1])

    def stop(self, sig: int | None = signal.SIGINT) -> None:
        """Shut down by the postmaster's signal (what ``pg_ctl stop -m`` sends): SIGTERM smart,
        SIGINT fast (ends every session, as an operator's restart does; the default), SIGQUIT
        immediate. SIGKILL, or a shutdown that does not end, kills every server process."""
        if self.proc is None:
            return
        self.thaw()
        if sig != signal.SIGKILL:
            self.proc.send_signal(signal.SIGINT if sig is None else sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL, self._processes())
            self.proc.wait(10)
        self.proc = None
        if self._logfile is not None:
            self._logfile.close()

    def close(self) -> None:
        try:
            self.stop(signal.SIGQUIT)  # immediate shutdown: the directory goes next
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
