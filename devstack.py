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

import os
import pwd
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
    ) -> None:
        super().__init__(name, log_dir)
        self.host = host
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

    def start(self) -> Self:
        import httpx

        argv = [str(BIN / "uvicorn"), "api.main:app", "--host", self.host,
                "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        if not self.access_log:
            argv.append("--no-access-log")
        self.spawn(argv, self.env)

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


class PostgresServer:
    """A private PostgreSQL cluster (initdb into a temporary directory, trust authentication)
    listening on ``host:port`` and on a socket in its own directory, so stopping, freezing or
    restarting it touches nobody else's database.

    PostgreSQL refuses to run as root: when this process is root, its commands run as the
    ``owner`` OS user (``runuser``). The server runs in its own process group, so ``freeze``
    (SIGSTOP) stops the postmaster and every backend at once: connections stay open and
    accepted, and nothing answers, as on a hung host. ``close`` always leaves nothing behind.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, owner: str = "postgres"):
        self.host = host
        self.port = port or free_port()
        self.owner = owner
        self.dir = Path(tempfile.mkdtemp(prefix="ebs-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that run a command as ``owner`` when this process is root. Not
        ``runuser``: it stays as the parent and, like su, stops itself when its child is
        stopped, so a frozen server's parent would never reap it."""
        if os.geteuid() != 0:
            return {}
        return {"user": self.owner, "group": pwd.getpwnam(self.owner).pw_gid, "extra_groups": []}

    def _run(self, *argv: str) -> None:
        binary = shutil.which(argv[0]) or argv[0]
        subprocess.run([binary, *argv[1:]], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, **self._run_as())  # fmt: skip

    def _initdb(self) -> None:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.owner)
            shutil.chown(self.sockets, self.owner)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8")  # fmt: skip
        self._initialised = True

    def start(self) -> Self:
        """Start (initdb on first start) and wait until it takes connections."""
        if not self._initialised:
            self._initdb()
        argv = [shutil.which("postgres") or "postgres", "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.sockets), "-c", f"listen_addresses={self.host}",
                "-c", "fsync=off", "-c", "max_connections=200"]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, **self._run_as())  # fmt: skip

        def up() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"private postgres exited; see {self.log}")
            probe = create_engine(self.url(), connect_args={"connect_timeout": 2})
            try:
                with probe.connect() as conn:
                    return conn.execute(text("SELECT 1")).scalar() == 1
            except Exception:
                return False
            finally:
                probe.dispose()

        wait_until(up, 60, "private postgres")
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
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # not running
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP the server (the postmaster first, so it forks nothing meanwhile)."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            for pid in reversed(self._processes()):
                os.kill(pid, signal.SIGCONT)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``: ``fast`` ends every session, as an operator's restart does."""
        if self.proc is None:
            return
        self.thaw()
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")
            self.proc.wait(30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            for pid in self._processes():
                os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class NamespacedPostgres(ManagedProcess):
    """A private PostgreSQL cluster in a temporary directory, run as the ``postgres`` OS user
    (the server refuses root), trusting the addresses in ``trust`` (a CIDR). ``template`` copies
    an already built data directory instead of running initdb again: ``build`` makes one."""

    USER = "postgres"

    def __init__(
        self, name: str, log_dir: Path, *, listen: str, trust: str, port: int = 5432
    ) -> None:
        super().__init__(name, log_dir)
        self.listen, self.trust, self.port = listen, trust, port
        self.dir = Path(tempfile.mkdtemp(prefix="ebs-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"

    def _as_postgres(self, *argv: str) -> list[str]:
        # setpriv execs (runuser forks), so the pid we hold is the postmaster itself.
        return ["setpriv", f"--reuid={self.USER}", f"--regid={self.USER}", "--init-groups", *argv]

    def initdb(self, template: Path | None = None) -> Self:
        self.sockets.mkdir()
        if template is not None:
            shutil.copytree(template, self.data, symlinks=True)
        else:
            shutil.chown(self.dir, self.USER, self.USER)
            argv = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"]
            subprocess.run(self._as_postgres(*argv), check=True, capture_output=True)
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.trust} trust\n")
        subprocess.run(["chown", "-R", f"{self.USER}:{self.USER}", str(self.dir)], check=True)
        return self

    def start(self) -> Self:
        self.spawn(
            self._as_postgres(
                "postgres", "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets),
                "-c", f"listen_addresses={self.listen}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=300",
            ),
            dict(os.environ),
        )  # fmt: skip
        ready = b"database system is ready to accept connections"
        self.wait_for(lambda: ready in self.log.read_bytes(), 60, f"postgres {self.name}")
        return self

    def socket_url(self, database: str) -> str:
        """A URL through the Unix socket, from this (root) namespace, whatever the network."""
        return f"postgresql+psycopg2://postgres@/{database}?host={self.sockets}&port={self.port}"

    def close(self) -> None:
        self.stop(signal.SIGQUIT)  # immediate shutdown: the directory goes next
        shutil.rmtree(self.dir, ignore_errors=True)
