"""What a flash-sale run prints and draws: the table, the ratios, the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "decisionsRatio": 1.5,  # queued decisions/s over the synchronous design's
    "drainRatio": 10.0,  # the worker's drain over the single-booking loop
}


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    designs = summary["designs"]
    out: dict[str, Any] = {}
    queued, sync = designs.get("queued"), designs.get("sync")
    if queued and sync:
        for key in ("decisionsPerSecond", "intakePerSecond"):
            if queued.get(key) and sync.get(key):
                out[key] = round(queued[key] / sync[key], 2)
        q99 = (queued.get("latencyMs") or {}).get("p99")
        s99 = (sync.get("latencyMs") or {}).get("p99")
        if q99 and s99:
            out["p99"] = round(q99 / s99, 2)
            out["p99BelowBaseline"] = q99 < s99
        out["decisionsTargetMet"] = out.get("decisionsPerSecond", 0) >= TARGETS["decisionsRatio"]
    if summary.get("drain"):
        out["drain"] = summary["drain"]["ratio"]
        out["drainTargetMet"] = out["drain"] >= TARGETS["drainRatio"]
    return out


def correct(summary: dict[str, Any]) -> bool:
    """No 5xx, no oversell, nothing lost, every client answered, in every design."""
    return all(
        d["fiveXX"] == 0 and d["oversell"] == 0 and d["lost"] == 0 and d["outcomes"]["errors"] == 0
        for d in summary["designs"].values()
    )


def _pair(p: dict[str, float] | None) -> str | None:
    return f"{p['p50']:,.0f} / {p['p99']:,.0f}" if p else None


def _ratio(designs: dict[str, Any], key: str) -> float | None:
    queued, sync = designs.get("queued", {}).get(key), designs.get("sync", {}).get(key)
    return round(queued / sync, 2) if queued and sync else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(summary: dict[str, Any]) -> str:
    designs = summary["designs"]
    names = list(designs)
    rows: list[tuple[str, list[Any], Any]] = []

    def row(label: str, get: Any, ratio: Any = None) -> None:
        rows.append((label, [get(designs[n]) for n in names], ratio))

    r = summary.get("ratios", {})
    row("intake req/s", lambda d: d["intakePerSecond"], r.get("intakePerSecond"))
    row("decisions/s", lambda d: d["decisionsPerSecond"], r.get("decisionsPerSecond"))
    row("wall to last decision (s)", lambda d: d["wallToLastDecisionSeconds"])
    for q in ("p50", "p95", "p99"):
        row(
            f"{q} request->decision (ms)",
            lambda d, q=q: (d["latencyMs"] or {}).get(q),
            r.get("p99") if q == "p99" else None,
        )
    row("  of which intake p50/p99 (ms)", lambda d: _pair(d.get("intakeLatencyMs")))
    row("  of which queue p50/p99 (ms)", lambda d: _pair(d.get("queueLatencyMs")))
    row("HTTP status counts", lambda d: " ".join(f"{k}:{v}" for k, v in d["httpStatus"].items()))
    row("confirmed / capacity", lambda d: f"{d['confirmedSeats']}/{d['capacity']}")
    row("oversell", lambda d: d["oversell"])
    row("lost", lambda d: d["lost"])
    row("5xx", lambda d: d["fiveXX"])
    row("client errors", lambda d: d["outcomes"]["errors"])
    row(
        "server CPU ms/request",
        lambda d: d.get("serverCpuMsPerRequest"),
        _ratio(designs, "serverCpuMsPerRequest"),
    )
    row("CPU s by process", lambda d: " ".join(f"{k}:{v}" for k, v in d["cpuSeconds"].items()))
    row("API CPU ms/request", lambda d: d.get("apiCpuMsPerRequest"))
    for i, label in enumerate(("before sell-out", "after sell-out")):
        row(f"  {label} (API / PostgreSQL)", lambda d, i=i: _phase(d, i))
    row("PostgreSQL sessions opened", lambda d: (d.get("cpuPhases") or {}).get("sessionsOpened"))
    row("WebSocket", lambda d: _ws(d["websocket"]))

    labels = ["metric", *names, "ratio"]
    cells = [[label, *(_fmt(v) for v in values), _fmt(ratio)] for label, values, ratio in rows]
    widths = [max(len(str(c[i])) for c in [labels, *cells]) for i in range(len(labels))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(labels, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    http_floor = summary.get("httpFloor")
    if http_floor:
        lines.append("")
        reached = ", ".join(
            f"{n} {d['decisionsPerSecond'] / http_floor['perSecond']:.0%}"
            for n, d in designs.items()
            if d.get("decisionsPerSecond")
        )
        lines.append(
            f"HTTP floor (same uvicorn, trivial route, same client): "
            f"{http_floor['perSecond']:,.0f} req/s, API CPU {http_floor['cpuMsPerRequest']} "
            f"ms/request; decisions/s reach {reached} of it"
        )
    drain = summary.get("drain")
    if drain:
        lines.append("")
        lines.append(
            f"drain of {drain['backlog']:,} pending bookings: worker "
            f"{drain['worker']['perSecond']:,.0f}/s ({drain['worker']['seconds']:.2f} s), "
            f"single-booking loop {drain['singleBookingLoop']['perSecond']:,.0f}/s "
            f"({drain['singleBookingLoop']['seconds']:.2f} s): ratio {drain['ratio']:.1f}x"
        )
    m = summary["machine"]
    lines.append(
        f"machine: {m['cores']} cores, {m['memoryGiB']} GiB; load average before "
        f"{m['loadAverage']}, after {m['loadAverageAfter']}"
    )
    if r:
        lines.append(
            "ratios (queued/sync): "
            + ", ".join(f"{k}={v}" for k, v in r.items() if not isinstance(v, bool))
        )
    return "\n".join(lines)


def _phase(design: dict[str, Any], index: int) -> str | None:
    phases = (design.get("cpuPhases") or {}).get("phases") or []
    if index >= len(phases):
        return None
    phase = phases[index]
    ms = phase["msPerRequest"]
    return f"{ms.get('api')} / {ms.get('postgres')} ms ({phase['requests']:,} requests)"


def _ws(ws: dict[str, Any]) -> str:
    if not ws.get("available"):
        return f"unavailable ({ws.get('reason')})"
    lag = ws.get("lagMs") or {}
    final = ws.get("finalLagMs") or {}
    # finalLag: when the last seat count reached a socket, relative to when the last buyer got
    # their 201 (negative: the watchers knew first).
    last = final.get("max")
    return (
        f"{ws['correct']}/{ws['subscribers']} saw final seats {ws['expectedSeats']}; "
        f"lag p50 {lag.get('p50')} ms p99 {lag.get('p99')} ms; "
        + (f"last update {last:+.0f} ms vs last 201" if last is not None else "")
    )


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = summary["designs"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    colors = {"queued": "tab:blue", "sync": "tab:orange"}
    for name, d in designs.items():
        t = d["timeline"]
        c = colors.get(name)
        ax1.plot(t["accepted"], range(1, len(t["accepted"]) + 1), "--", color=c,
                 label=f"{name} accepted")  # fmt: skip
        ax1.plot(t["decided"], range(1, len(t["decided"]) + 1), "-", color=c,
                 label=f"{name} decided")  # fmt: skip
        seats = [d["capacity"] - i for i in range(1, len(t["confirmed"]) + 1)]
        ax3.step([0.0, *t["confirmed"]], [d["capacity"], *seats], where="post", color=c,
                 label=f"{name} (client view)")  # fmt: skip
        series = d.get("websocketSeries") or []
        if series:
            ax3.plot([s[0] for s in series], [s[1] for s in series], ".", color="tab:green",
                     markersize=3, label=f"{name} WebSocket subscriber")  # fmt: skip
    ax1.set(title="Requests over time", xlabel="seconds since first request", ylabel="count")
    ax1.legend()

    quantiles = ["p50", "p95", "p99", "max"]
    width = 0.8 / max(1, len(designs))
    for i, (name, d) in enumerate(designs.items()):
        lat = d["latencyMs"] or {}
        xs = [j + i * width for j in range(len(quantiles))]
        ax2.bar(xs, [lat.get(q, 0) for q in quantiles], width, label=name, color=colors.get(name))
    ax2.set_xticks([j + width * (len(designs) - 1) / 2 for j in range(len(quantiles))], quantiles)
    ax2.set(title="Request -> decision latency", ylabel="ms")
    ax2.legend()

    ax3.set(title="Seats left", xlabel="seconds since first request", ylabel="seats")
    ax3.legend()
    cfg = summary["config"]
    fig.suptitle(
        f"Flash sale: C={cfg['clients']} N={cfg['requests']:,} S={cfg['seats']:,} "
        f"({summary['machine']['cores']} cores; ratios from one run)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
