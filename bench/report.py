#!/usr/bin/env python3
"""Turns bench/compare's raw.jsonl into bench/results/LATEST.md and latency.svg.

Usage: bench/report.py bench/results/raw.jsonl
Standard library only; the plot is a hand-written SVG.
"""

import json
import math
import os
import re
import statistics
import sys

COLORS = {
    "courier": "#d62728",
    "courier no-poll": "#8c1010",
    "baseline": "#f4a582",
    "floor busy-poll": "#7f7f7f",
    "redis": "#1f77b4",
    "zeromq": "#2ca02c",
    "floor": "#000000",
    "toy": "#9467bd",
    "toy+deadline": "#c5b0d5",
    "python": "#ff7f0e",
    "nats": "#17becf",
    "tonic": "#bcbd22",
}
PERCENTILES = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]


def fmt(value, digits=0):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def load(path):
    meta, rows = {}, []
    with open(path) as f:
        for line in f:
            item = json.loads(line)
            if "meta" in item:
                meta = item["meta"]
            else:
                rows.append(item)
    return meta, rows


def aggregate(rows):
    """One row per (system, shape): the median of each figure over the rounds, and the
    lowest and highest requests/s."""
    groups = {}
    for row in rows:
        groups.setdefault((row["system"], row["shape"]), []).append(row)
    out = []
    for (system, shape), group in groups.items():
        merged = {"system": system, "shape": shape, "rounds": len(group)}
        keys = [k for k in group[0] if k not in ("system", "shape", "round")]
        for key in keys:
            values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
            merged[key] = statistics.median(values) if values else None
        merged["rps_min"] = min(r["rps"] for r in group)
        merged["rps_max"] = max(r["rps"] for r in group)
        out.append(merged)
    return out


def find(rows, system, shape):
    for row in rows:
        if row["system"] == system and row["shape"] == shape:
            return row
    return None


def table(rows):
    lines = [
        "| system | shape | requests/s | range over rounds | p50 µs | p99 µs | p99.9 µs | courier ÷ this, req/s | courier ÷ this, p50 | server CPU µs/req | load generator busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        courier = find(rows, "courier", row["shape"])
        rps_ratio = p50_ratio = "–"
        if not row["system"].startswith("courier") and courier:
            rps_ratio = f"{courier['rps'] / row['rps']:.2f}×"
            if courier.get("p50") and row.get("p50"):
                p50_ratio = f"{courier['p50'] / row['p50']:.2f}×"
        busy = "–"
        if row.get("client_cpu_us"):
            # Share of one CPU the load generator spent: near 100 % it, not the server,
            # set the figure.
            share = row["rps"] * row["client_cpu_us"] / 1e6
            busy = f"{share:.0%}" + (" ⚠" if share >= 0.9 else "")
        lines.append(
            f"| {row['system']} | {row['shape']} | {fmt(row['rps'])} | "
            f"{fmt(row['rps_min'])} – {fmt(row['rps_max'])} | {fmt(row.get('p50'), 1)} | "
            f"{fmt(row.get('p99'), 1)} | {fmt(row.get('p999'), 1)} | {rps_ratio} | {p50_ratio} | "
            f"{fmt(row.get('server_cpu_us'), 2)} | {busy} |"
        )
    return "\n".join(lines)


def goals(rows, busy_poll):
    """The targets of the performance issue, checked against this run's medians."""
    out = []

    def check(name, ok, detail):
        mark = "met" if ok else "**not met**"
        out.append(f"| {name} | {detail} | {mark} |")

    def ratio(system, shape, key="rps", courier="courier"):
        c, a = find(rows, courier, shape), find(rows, system, shape)
        if not c or not a or not c.get(key) or not a.get(key):
            return None
        return c[key] / a[key]

    r = ratio("redis", "50 conn")
    if r is not None:
        check("50 connections, no pipelining: ≥ 1.3 × Redis", r >= 1.3, f"{r:.2f}×")
    for shape in ("50 conn P16", "50 conn P64"):
        r = ratio("redis", shape)
        if r is not None:
            check(f"{shape}: ≥ 1.0 × Redis", r >= 1.0, f"{r:.2f}×")
    r = ratio("zeromq", "one-way")
    if r is not None:
        check("one-way streaming: ≥ 1.0 × ZeroMQ PUSH/PULL", r >= 1.0, f"{r:.2f}×")
    for courier, label in [("courier", "default server"), ("courier no-poll", f"--busy-poll {busy_poll}")]:
        r = ratio("floor", "1 conn", "p50", courier)
        if r is not None:
            check(f"1 connection p50 ({label}): ≤ 1.25 × the blocking floor", r <= 1.25, f"{r:.2f}×")
        r = ratio("zeromq", "1 conn", "p50", courier)
        if r is not None:
            check(f"1 connection p50 ({label}): ≤ 0.5 × ZeroMQ REQ/REP", r <= 0.5, f"{r:.2f}×")
    for row in rows:
        if row["system"].startswith("courier") and row.get("p999") and row.get("p50"):
            t = row["p999"] / row["p50"]
            detail = f"{t:.1f}×"
            floor = find(rows, "floor", row["shape"])
            if floor and floor.get("p999") and floor.get("p50"):
                # The same shape with C on both ends: the machine's own tail.
                detail += f" (floor in C: {floor['p999'] / floor['p50']:.1f}×)"
            check(f"tail, {row['system']} {row['shape']}: p99.9 ≤ 5 × p50", t <= 5, detail)
    for shape in ("1 conn", "50 conn", "50 conn P16", "50 conn P64"):
        c, a = find(rows, "courier", shape), find(rows, "redis", shape)
        if c and a and c.get("client_cpu_us") and a.get("client_cpu_us"):
            r = c["client_cpu_us"] / a["client_cpu_us"]
            check(
                f"load generator CPU per request, {shape}: courier bench ≤ redis-benchmark",
                r <= 1.0,
                f"{c['client_cpu_us']:.2f} vs {a['client_cpu_us']:.2f} µs ({r:.2f}×)",
            )
    for shape in ("1 conn", "50 conn", "50 conn P16", "50 conn P64"):
        r = ratio("toy", shape)
        if r is not None:
            check(f"cost of features, {shape}: ≥ 0.95 × the Tokio toy's requests/s", r >= 0.95, f"{r:.2f}×")
    return "\n".join(["| goal | this run (medians) | |", "|---|---:|---|"] + out)


def goals_second_round(rows):
    """The second round's targets (the shapes this run measures; large messages, 10,000
    connections and idle memory are measured by other scripts). Beside courier's ratio, the
    same ratio for the C floor of that shape where this run measured one (the C epoll echo
    server, or the C blocking loop for large messages): a goal that the floor, with no
    runtime, no framing and no work per message, misses too is out of this machine's reach,
    and the row says so."""
    out = []

    def ratio(system, shape, key="rps", courier="courier"):
        c, a = find(rows, courier, shape), find(rows, system, shape)
        if not c or not a or not c.get(key) or not a.get(key):
            return None
        return c[key] / a[key]

    def shown(r, ok):
        # Two decimals, or three where two would round a miss up to the goal (0.897 is
        # not 0.90).
        text = f"{r:.2f}"
        if not ok(r) and ok(float(text)):
            text = f"{r:.3f}"
        return f"{text}×"

    def busy(system, shape):
        # The shares of their CPU that courier bench and `system`'s own load generator
        # used, where both were at 90 % or more: then they, not the servers, set the ratio.
        shares = []
        for name in ("courier", system):
            row = find(rows, name, shape)
            if not row or not row.get("client_cpu_us") or not row.get("rps"):
                return None
            shares.append(row["rps"] * row["client_cpu_us"] / 1e6)
        return shares if min(shares) >= 0.9 else None

    def check(name, system, shape, ok, key="rps"):
        r = ratio(system, shape, key)
        floor = None if system.startswith("floor") else ratio(system, shape, key, courier="floor")
        floor_text = "–" if floor is None else shown(floor, ok)
        # Against the C floor itself, the same ratio for the Tokio toy (an echo with no
        # features) shows what a server on Tokio reaches at all.
        toy = ratio(system, shape, key, courier="toy") if system == "floor" else None
        if r is None:
            out.append(f"| {name} | not measured in this run | {floor_text} | |")
        elif ok(r):
            out.append(f"| {name} | {shown(r, ok)} | {floor_text} | met |")
        elif floor is not None and not ok(floor):
            out.append(f"| {name} | {shown(r, ok)} | {floor_text} | **not met**; out of reach here: the C floor misses it too |")
        elif (shares := busy(system, shape)) is not None:
            mine, theirs = shares
            out.append(f"| {name} | {shown(r, ok)} | {floor_text} | **not met**; set by the load generators: "
                       f"courier bench at {mine:.0%} of its CPU, {system}'s at {theirs:.0%} (one C load "
                       f"generator for both: the C load row of this shape) |")
        elif toy is not None and not ok(toy):
            out.append(f"| {name} | {shown(r, ok)} | {floor_text} | **not met**; the Tokio toy, an echo with no "
                       f"features, reaches {shown(toy, ok)} in the same run |")
        else:
            out.append(f"| {name} | {shown(r, ok)} | {floor_text} | **not met** |")

    for shape in ("50 conn P16", "50 conn P64"):
        check(f"{shape}: ≥ 1.5 × Redis", "redis", shape, lambda r: r >= 1.5)
        check(f"{shape}, one C load generator for both: ≥ 1.5 × Redis", "redis", f"{shape} C load",
              lambda r: r >= 1.5)
    check("one-way streaming: ≥ 2.0 × ZeroMQ PUSH/PULL", "zeromq", "one-way", lambda r: r >= 2.0)
    check("50 connections, C load generator: ≥ 0.9 × the C epoll echo server", "floor", "50 conn C load",
          lambda r: r >= 0.9)
    check("50 connections, C load generator: ≥ 1.5 × Redis", "redis", "50 conn C load", lambda r: r >= 1.5)
    check("request/reply, 50 connections: ≥ 4 × NATS requests/s", "nats", "50 conn", lambda r: r >= 4)
    check("request/reply, 1 connection: p50 ≤ 0.5 × NATS", "nats", "1 conn", lambda r: r <= 0.5, "p50")
    check("request/reply, 50 connections: ≥ 3 × tonic requests/s", "tonic", "50 conn", lambda r: r >= 3)
    check("request/reply, 1 connection: p50 ≤ 0.5 × tonic", "tonic", "1 conn", lambda r: r <= 0.5, "p50")
    for shape in ("1 conn 64 KiB", "1 conn 1 MiB"):
        check(f"large messages, {shape}: ≥ 0.8 × the C blocking loop's MB/s", "floor", shape,
              lambda r: r >= 0.8)
        check(f"large messages, {shape}: ≥ 1.5 × ZeroMQ REQ/REP's MB/s", "zeromq", shape,
              lambda r: r >= 1.5)
    check("1 connection, default settings: p50 ≤ 1.2 × the polling C floor", "floor busy-poll", "1 conn",
          lambda r: r <= 1.2, "p50")
    return "\n".join(["| goal | courier, this run (medians) | the C floor, same shape | |",
                      "|---|---:|---:|---|"] + out)


def goals_elsewhere(results):
    """The second round's goals that other scripts measure, each taking minutes of its own
    (10,000 connections, an idle server): quoted from the result file each writes, with the
    date and command of its run, so that every goal is in this report. These runs are not
    this one: their dates say how far apart they are."""
    def read(name):
        try:
            with open(os.path.join(results, name), encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None

    def measured(text):
        found = re.search(r"Measured (.+?) by `([^`]+)`", text, re.S)
        return f"{' '.join(found[1].split())}, `{found[2]}`" if found else "date and command not found"

    out = []
    many = read("MANY-CONNECTIONS.md")
    if many is None:
        out.append("- 10,000 connections: not measured (no MANY-CONNECTIONS.md; `bench/many_connections`)")
    else:
        lines = [f"  {line}" for line in many.splitlines() if line.startswith("- ") and "≤" in line]
        out.append(f"- 10,000 connections, open loop ([MANY-CONNECTIONS.md](MANY-CONNECTIONS.md), "
                   f"{measured(many)}):" + ("" if lines else " no goal lines in the file"))
        out += lines
    idle = read("IDLE.md")
    sizes = [int(m.replace(",", "")) for m in re.findall(r"\| ([\d,]+) B \|", idle or "")]
    if not sizes:
        out.append("- idle connection ≤ 2 KiB of server memory: not measured (no IDLE.md, or no figures in "
                   "it; `bench/idle_memory`)")
    else:
        verdict = "met" if max(sizes) <= 2048 else "**not met**"
        out.append(f"- idle connection ≤ 2 KiB of server memory ([IDLE.md](IDLE.md), {measured(idle)}): "
                   f"{', '.join(f'{n:,} B' for n in sizes)} per connection, {verdict}")
    wake = read("IDLE-WAKEUPS.md")
    rows = re.findall(r"^\| default \| ([\d,]+) \| \d+ \| ([\d,]+) \|", wake or "", re.M)
    if not rows:
        out.append("- idle server, default settings: 0 wake-ups over 10 s: not measured (no IDLE-WAKEUPS.md, or "
                   "no default rows in it; `bench/idle_wakeups`)")
    else:
        verdict = "met" if all(int(w.replace(",", "")) == 0 for _, w in rows) else "**not met**"
        counts = "; ".join(f"{w} with {c} idle connections" for c, w in rows)
        out.append(f"- idle server, default settings: 0 wake-ups over 10 s ([IDLE-WAKEUPS.md](IDLE-WAKEUPS.md), "
                   f"{measured(wake)}): {counts}, {verdict}")
    return "\n".join(out)


def pipelining(rows):
    """Pipelined shapes under one C load generator: what the servers themselves reach, and
    the server CPU per request that 1.5 × Redis would take, beside what courier and the C
    echo server (no framing, no work per message: the kernel's cost) spend."""
    lines = [
        "| shape | courier req/s | Redis req/s | C echo req/s | courier ÷ Redis | "
        "server CPU µs/req: courier | Redis | C echo | 1.5 × Redis would need |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in ("P16", "P64"):
        shape = f"50 conn {depth} C load"
        c, r, f = (find(rows, system, shape) for system in ("courier", "redis", "floor"))
        if not (c and r and c.get("rps") and r.get("rps")):
            continue
        need = 1e6 / (1.5 * r["rps"])
        lines.append(
            f"| {shape} | {c['rps']:,.0f} | {r['rps']:,.0f} | {f['rps'] if f else 0:,.0f} | "
            f"{c['rps'] / r['rps']:.2f}× | {fmt(c.get('server_cpu_us'), 2)} | {fmt(r.get('server_cpu_us'), 2)} | "
            f"{fmt(f.get('server_cpu_us') if f else None, 2)} | {need:.2f} |"
        )
    return "\n".join(lines)


def server_cpu(rows):
    """Server CPU per request beside the toys': throughput alone cannot show it where the
    load generator, or both processes, run their CPUs flat out."""
    lines = [
        "| shape | courier µs/req | toy µs/req | toy+deadline µs/req | courier's requests per CPU second ÷ the toy's |",
        "|---|---:|---:|---:|---:|",
    ]
    for shape in ("1 conn", "50 conn", "50 conn P16", "50 conn P64"):
        c, t, d = (find(rows, system, shape) for system in ("courier", "toy", "toy+deadline"))
        if not (c and t and c.get("server_cpu_us") and t.get("server_cpu_us")):
            continue
        deadline = fmt(d.get("server_cpu_us"), 2) if d else "–"
        lines.append(
            f"| {shape} | {c['server_cpu_us']:.2f} | {t['server_cpu_us']:.2f} | {deadline} | "
            f"{t['server_cpu_us'] / c['server_cpu_us']:.2f}× |"
        )
    return "\n".join(lines)


def svg(rows, path):
    panels = [
        ("1 connection, round trip", "1 conn"),
        ("50 connections, no pipelining", "50 conn"),
    ]
    width, height, margin = 1000, 420, 80
    panel_w = (width - margin * 3) / 2
    shown = {shape for _, shape in panels}
    values = [row[k] for row in rows if row["shape"] in shown for k, _ in PERCENTILES if row.get(k)]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))

    def y(v):
        return margin + (height - 2 * margin) * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height + 40}" fill="white"/>',
    ]
    for index, (title, shape) in enumerate(panels):
        x0 = margin + index * (panel_w + margin)

        def x(i):
            return x0 + panel_w * i / (len(PERCENTILES) - 1)

        parts.append(f'<text x="{x0 + panel_w / 2}" y="{margin - 25}" text-anchor="middle" font-size="14">{title}</text>')
        decade = lo
        while decade <= hi:
            parts.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y(decade)}" y2="{y(decade)}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y(decade) + 4}" text-anchor="end">{decade:g} µs</text>')
            decade *= 10
        for i, (_, label) in enumerate(PERCENTILES):
            parts.append(f'<text x="{x(i)}" y="{height - margin + 18}" text-anchor="middle">{label}</text>')
        legend_y = margin
        for row in rows:
            if row["shape"] != shape:
                continue
            points = [(x(i), y(row[k])) for i, (k, _) in enumerate(PERCENTILES) if row.get(k)]
            if not points:
                continue
            color = COLORS.get(row["system"], "#777")
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                + " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                + '"/>'
            )
            for px, py in points:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>')
            parts.append(f'<text x="{x0 + 8}" y="{legend_y}" fill="{color}">{row["system"]}</text>')
            legend_y += 15
    parts.append(
        f'<text x="{width / 2}" y="{height + 25}" text-anchor="middle" fill="#555">'
        "latency percentiles, log scale; Redis reports no p90 or p99.9</text>"
    )
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def baseline_note(meta):
    if not meta.get("baseline"):
        return ""
    return (f"- **baseline**: `{meta['baseline']}`, another courier server binary measured beside "
            "courier in every round (the two in alternating order), loaded the same way: its "
            "\"courier ÷ this\" is the effect of the change between them.\n")


def main():
    raw = sys.argv[1]
    meta, measured = load(raw)
    rows = aggregate(measured)
    busy_poll = meta.get("busy_poll", "?")
    results = os.path.dirname(os.path.abspath(raw))
    svg(rows, os.path.join(results, "latency.svg"))
    courier_cpu = [
        f"{r['shape']} {r['client_cpu_us']:.2f} µs"
        for r in rows
        if r["system"] == "courier" and r.get("client_cpu_us") is not None
    ]
    text = f"""# courier against its anchors

Measured {meta.get('date', '?')} on {meta.get('cpu_model', '?')} ({meta.get('machine', '?')}),
{meta.get('placement', '')}. Payload {meta.get('size', '?')} bytes, {meta.get('seconds', '?')} s
measured per shape after a 1 s warm-up (courier bench loads). Every system was measured
{meta.get('rounds', 1)} times, one round after another; each figure below is the median of
its rounds, with the lowest and highest requests/s beside it. Produced by
`{meta.get('command', 'bench/compare')}` in {meta.get('elapsed_s', '?')} s; every round's
figures are in [raw.jsonl](raw.jsonl).

- **courier**: `courier serve` (echo) with its default settings, loaded by `courier bench`,
  every reply verified. "one-way" is one connection streaming ONEWAY frames.
- **courier no-poll**: the same server with `--busy-poll {busy_poll}`: it never polls. By
  default courier polls its sockets for 100 µs after each request while requests keep
  coming less than that far apart, and sleeps otherwise (busy_poll in config/courier.toml);
  this row is what that buys on one connection.
- **redis**: Debian's redis-server, `redis-benchmark -t ping_mbulk` with the same `-c` and
  `-P` (PING carries no payload; the reply is `+PONG`). redis-benchmark reports p50, p99
  and max only.
- **zeromq**: bench/zmq_perf.c, measured as libzmq's perf tools do: PUSH/PULL on one
  connection, clock started at the first message ("one-way"); REQ/REP round trips ("1 conn").
- **floor**: bench/floor.c, blocking ping-pong over loopback with no runtime: the best round
  trip this placement allows to programs that sleep while they wait. At 50 connections,
  bench/epoll_floor.c: a C epoll echo server loaded by a C epoll client, one message in
  flight per connection: what the kernel and CPUs allow at that shape, tail included.
- **floor busy-poll**: the same with the server reading with `MSG_DONTWAIT` in a loop
  instead of blocking (the client still blocks): the floor for a polling server.
- **toy**: examples/toy_echo.rs, Tokio's `LengthDelimitedCodec` echo in 20 lines, loaded by
  `courier bench --framing plain`.
- **toy+deadline**: examples/toy_deadline.rs, the toy with one idle deadline per connection
  (courier has three: handshake, frame and idle): what having a timer at all costs.
- **python**: bench/py_echo.py, an asyncio length-prefixed echo server, loaded the same way.
- **nats**: Debian's nats-server with bench/anchors' responder (async-nats, a queue-group
  member, pinned with the server) and requester (one connection per requester, one request
  in flight each): request/reply as a NATS user writes it.
- **tonic**: gRPC unary echo with tonic, bench/anchors' server and client (one HTTP/2
  connection per client task, one call in flight each).
- **1 conn 64 KiB, 1 conn 1 MiB**: large messages on one connection, one in flight:
  courier bench against courier, bench/floor.c's blocking ping-pong, ZeroMQ REQ/REP; the
  same size for all, so the requests/s ratio is the MB/s ratio.
- **50 conn C load**: courier, Redis (`ECHO` with the payload), the C epoll echo server
  (floor) and the toy, each loaded by bench/epoll_floor.c's client speaking its protocol,
  50 connections, one request in flight each: the same load generator for every server.
{baseline_note(meta)}
"courier ÷ this": above 1 means courier served more requests per second; for p50, below 1
means courier answered faster. "server CPU µs/req" is the server process's CPU time (all its
threads, from /proc) over the middle of the measured window, divided by the requests
answered in it; for the C loop and ZeroMQ with large messages, whose servers exit after
the last request, it is their CPU time over the whole run (from the kernel's accounting of
the finished process) over every request. "load generator busy" is requests/s × the load generator's
CPU per request: at 90 % or more (⚠) the load generator, not the server, set that figure,
and a ratio between two such rows compares load generators.

{table(rows)}

![latency percentiles](latency.svg)

## Against the performance goals

{goals(rows, busy_poll)}

## Against the second round's goals

{goals_second_round(rows)}

### Measured by other scripts

{goals_elsewhere(results)}

## Pipelining, one load generator for every server

The P16 and P64 rows above are each server with its own load generator, and both load
generators run near their CPU's limit. Here one C epoll client drives every server, 50
connections with 16 or 64 requests in flight on each, and the servers' CPUs are the limit.
"1.5 × Redis would need" is the server CPU per request at which one CPU serves 1.5 × Redis's
requests/s; the C echo server (bytes echoed back, no framing, no work per message) shows
what the kernel alone costs per request at that depth.

{pipelining(rows)}

## Server CPU per request

Not one of the goals above, which compare throughput: what each server spends per request,
from its process's CPU time over the middle of the measured window. Where the server's CPU
is not saturated (one connection) this is the cost of its features that throughput hides;
toy+deadline shows how much of it any server with an idle deadline pays.

{server_cpu(rows)}

courier bench's own CPU per request (measured window): {', '.join(courier_cpu)}. Where a
shape's throughput is close to 1 / (that CPU time), the load generator, not the server, is
the limit. redis-benchmark's CPU per request is taken from the kernel's accounting of the
finished process (RUSAGE_CHILDREN), over its whole run.
"""
    with open(os.path.join(results, "LATEST.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
