"""The CPU meter: CPU seconds each part of the system spends in a phase, split at a mark.

A figure that other people's load on a shared machine barely moves, unlike requests per second.
Processes are read from ``/proc`` (utime + stime, threads included). PostgreSQL backends come and
go while a phase runs (a pool that churns opens and closes sessions), and a backend that exited
before the phase ended is gone from ``/proc``: a thread polls this database's backends every
``POLL`` seconds and keeps each one's last reading, so the CPU of short-lived backends is counted
too (all but their last ``POLL`` seconds). ``pg_stat_database.sessions`` says how many sessions
the phase opened.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.stack import Data, Stack, connect

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.05
# This database's backends but the meter's own.
BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid()"
)


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class CpuMeter:
    """``with CpuMeter(stack, data, database_url) as cpu: ...; cpu.mark()`` splits the phase."""

    def __init__(self, stack: Stack, data: Data, database_url: str) -> None:
        self.stack, self.data, self.database_url = stack, data, database_url
        self.readings: list[dict[str, float]] = []  # per group, at start, each mark, end
        self.marks: list[float] = []
        self._backends: dict[int, tuple[float, float]] = {}  # pid -> (first, last) CPU seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sessions: list[int] = []

    # -------------------------------------------------------------- PostgreSQL backends

    def _poll(self) -> None:
        conn = connect(self.database_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute(BACKENDS)
                    self._read_backends([r[0] for r in cur.fetchall()])
                    self._stop.wait(POLL)
        finally:
            conn.close()

    def _read_backends(self, pids: list[int]) -> None:
        with self._lock:
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds is None:
                    continue
                first, _ = self._backends.get(pid, (seconds, seconds))
                self._backends[pid] = (first, seconds)

    def _postgres(self) -> float:
        with self._lock:
            return sum(last - first for first, last in self._backends.values())

    def _session_count(self) -> int:
        return int(
            self.data.sql(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )[0][0]
        )

    # -------------------------------------------------------------- processes

    def _reading(self) -> dict[str, float]:
        groups = {
            p.name: _descendants([p.proc.pid])
            for p in self.stack.processes
            if p.proc is not None and p.running
        }
        groups["client"] = [os.getpid()]
        reading = {
            name: sum(cpu_seconds(pid) or 0.0 for pid in pids) for name, pids in groups.items()
        }
        self._read_backends([r[0] for r in self.data.sql(BACKENDS)])
        reading["postgres"] = self._postgres()
        return reading

    def __enter__(self) -> CpuMeter:
        self._sessions.append(self._session_count())
        self.readings.append(self._reading())
        self._thread = threading.Thread(target=self._poll, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def mark(self) -> None:
        """Close a phase here and start the next (e.g. at the sell-out)."""
        self.marks.append(time.time())
        self.readings.append(self._reading())
        self._sessions.append(self._session_count())

    def __exit__(self, *_: object) -> None:
        self.readings.append(self._reading())
        self._stop.set()
        self._thread.join(5)
        self._sessions.append(self._session_count())

    # -------------------------------------------------------------- results

    def phase(self, index: int) -> dict[str, float]:
        before, after = self.readings[index], self.readings[index + 1]
        return {g: round(after[g] - before.get(g, 0.0), 2) for g in after}

    @property
    def seconds(self) -> dict[str, float]:
        first, last = self.readings[0], self.readings[-1]
        return {g: round(last[g] - first.get(g, 0.0), 2) for g in last}

    def sessions(self, index: int | None = None) -> int:
        if index is None:
            return self._sessions[-1] - self._sessions[0]
        return self._sessions[index + 1] - self._sessions[index]

    def report(self, sent: list[float]) -> dict[str, Any]:
        """Per phase: requests sent in it, CPU seconds by group, ms per request, sessions."""
        bounds = [float("-inf"), *self.marks, float("inf")]
        phases = []
        for i in range(len(self.readings) - 1):
            count = sum(1 for t in sent if bounds[i] <= t < bounds[i + 1])
            seconds = self.phase(i)
            phases.append(
                {
                    "requests": count,
                    "cpuSeconds": seconds,
                    "msPerRequest": {
                        g: round(1000 * s / count, 3) if count else None for g, s in seconds.items()
                    },
                    "sessionsOpened": self.sessions(i),
                }
            )
        return {"phases": phases, "sessionsOpened": self.sessions()}
