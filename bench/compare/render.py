"""Writes a comparison run's Markdown report and SVG chart from its JSON.

    python render.py bench/results/DATE.json      # writes DATE.md and DATE.svg beside it

The chart is plain SVG written here (no chart library): wall time of every contender on a
logarithmic scale, one group per database and size, each bar labelled with its seconds, its
ratio to the single statement and its peak RSS.
"""
import json
import math
import sys
from html import escape
from pathlib import Path

NAMES = {"postgres": "PostgreSQL", "mariadb": "MariaDB", "sqlite": "SQLite"}
COLOURS = {"single": "#6b7280", "godwit": "#0f766e", "keyset-loop": "#b45309", "celery": "#7c3aed"}


def colour(label):
    for prefix, c in COLOURS.items():
        if label.startswith(prefix):
            return c
    return "#334155"


def fmt(x, digits=2):
    return "–" if x is None else f"{x:,.{digits}f}"


def groups(report):
    """Results by database and size, the single statement first."""
    seen = {}
    for r in report["results"]:
        seen.setdefault((r["database"], r["rows"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["contender"] != "single") for k, v in seen.items()}


def ratio(r, rows):
    single = next((s for s in rows if s["contender"] == "single" and not s.get("error")), None)
    return (r.get("projected_s") or r["seconds"]) / single["seconds"] if single else None


def svg(report):
    bar_h, gap, left, width = 18, 6, 250, 440
    lines, y = [], 40
    data = [(k, v) for k, v in groups(report).items()]
    off = [o for o in report.get("offset", []) if o["finished"] or o.get("projected_min_s")]
    all_s = [r.get("projected_s") or r["seconds"] for _, rows in data for r in rows if not r.get("error")] + [o["seconds"] if o["finished"] else o["projected_min_s"] for o in off]
    lo = 10 ** math.floor(math.log10(max(min(all_s), 0.01)))
    hi = 10 ** math.ceil(math.log10(max(all_s)))
    scale = lambda s: width * (math.log10(s) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731
    body = []
    for (db, n), rows in data:
        side = " — a second run, no load" if any(r.get("note", "").startswith("second") for r in rows) else ""
        body.append(f'<text x="10" y="{y + 12}" font-weight="bold">{NAMES[db]}, {n:,} customers '
                    f'({n // 3:,} rewritten){side}</text>')
        y += bar_h + gap
        for r in rows:
            if r.get("error"):
                continue
            secs = r.get("projected_s") or r["seconds"]
            w = max(scale(secs), 1)
            x = ratio(r, rows)
            label = f'{secs:.2f} s · {x:.2f}x · {r["peak_rss_mib"]:.0f} MiB' if x else f'{secs:.2f} s'
            if r.get("capped"):
                label += " (projected)"
            body.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{escape(r["contender"])}</text>')
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour(r["contender"])}"/>')
            body.append(f'<text x="{left + w + 6:.1f}" y="{y + 13}">{label}</text>')
            y += bar_h + gap
        y += gap * 2
    if off:
        body.append(f'<text x="10" y="{y + 12}" font-weight="bold">PostgreSQL, naive OFFSET/LIMIT script '
                    f'(grows as N²)</text>')
        y += bar_h + gap
        for o in off:
            secs = o["seconds"] if o["finished"] else o["projected_min_s"]
            label = f'{secs:.2f} s' if o["finished"] else f'≥ {secs:,.0f} s (stopped at {o["seconds"]:.0f} s, its rate so far)'
            w = max(scale(secs), 1)
            body.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">OFFSET, {o["rows"]:,} rows</text>')
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#be123c"/>')
            body.append(f'<text x="{left + w + 6:.1f}" y="{y + 13}">{escape(label)}</text>')
            y += bar_h + gap
        y += gap * 2
    ticks = []
    t = lo
    while t <= hi * 1.0001:
        x = left + scale(t)
        ticks.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{y}" stroke="#e5e7eb"/>')
        ticks.append(f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle" fill="#6b7280">{t:g} s</text>')
        t *= 10
    total_w = left + width + 320
    lines.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{y + 40}" '
                 f'font-family="sans-serif" font-size="12">')
    lines.append(f'<rect width="{total_w}" height="{y + 40}" fill="white"/>')
    m = report["machine"]
    lines.append('<text x="10" y="18" font-size="14" font-weight="bold">Workload 1, phone numbers: wall time '
                 '(log scale) · ratio to one UPDATE · peak RSS of the process tree</text>')
    lines += ticks + body
    lines.append(f'<text x="10" y="{y + 32}" fill="#6b7280">{report["date"]}, {m["cores"]} cores, '
                 f'{m["memory_gib"]} GiB, godwit {m["godwit_commit"]}; load average {report["loadavg_start"]} '
                 f'at start (a shared machine); contenders one after another in one run'
                 + (', groups marked otherwise in a second' if any(r.get("note", "").startswith("second")
                                                                 for r in report["results"]) else "") + '</text>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def markdown(report, svg_name):
    m = report["machine"]
    out = [f"# Benchmark: godwit beside the alternatives, {report['date']}", ""]
    out.append(f"Made by `scripts/bench{' --quick' if report.get('quick') else ''}` (bench/compare/), "
               f"started {report['started']}. Every contender ran on a fresh copy of the same generated data; "
               "the figures of one table come from one run, contenders one after another.")
    out.append("")
    out.append(f"![chart]({svg_name})")
    out.append("")
    out.append("## Machine")
    out.append("")
    out.append(f"- {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; godwit at "
               f"{m['godwit_commit']}; Python {m['python']}, Celery {m['celery']}, {m['redis']}; {m['pgbench']}.")
    out.append(f"- Shared machine: load average {report['loadavg_start']} at the start and "
               f"{report.get('loadavg_end')} at the end; {report['builds_running_at_start']} compiler processes "
               f"running at the start, {report.get('builds_running_at_end')} at the end. Single figures move by "
               "10–20% between runs; compare within one table.")
    for db, info in report["databases"].items():
        settings = ", ".join(f"{k} {v}" for k, v in info["settings"].items())
        out.append(f"- {NAMES[db]} {info['version']}: {settings}.")
    out.append("")
    if report.get("targets"):
        out.append("## Targets (issue 16)")
        out.append("")
        out.append("| target | figure | |")
        out.append("| --- | --- | --- |")
        for t in report["targets"]:
            out.append(f"| {t['target']} | {t['figure']} | {'met' if t['met'] else '**missed**'} |")
        out.append("")
    idle = report.get("idle_load")
    for (db, n), rows in groups(report).items():
        out.append(f"## {NAMES[db]}, {n:,} customers ({n // 3:,} rewritten)")
        out.append("")
        head = ("| contender | seconds | rows/s | × single | peak RSS MiB | CPU s | database CPU s | longest "
                "transaction s | WAL MiB |")
        sep = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        if any(r.get("load") for r in rows):
            head += " load p50 / p99 ms | load errors |"
            sep += " ---: | ---: |"
        out += [head + " same data |", sep + " --- |"]
        for r in rows:
            if r.get("error"):
                out.append(f"| {r['contender']} | failed: {r['error']} |")
                continue
            x = ratio(r, rows)
            wal = r.get("wal_bytes")
            secs = fmt(r["seconds"])
            if r.get("capped"):
                secs = f"stopped at {r['seconds']:.0f} ({r['done']:,} rows done; {r['projected_s']:,.0f} projected)"
            cells = [r["contender"], secs, f"{r['rows_per_s']:,}", fmt(x) + "x" if x else "–",
                     fmt(r["peak_rss_mib"], 1), fmt(r["cpu_s"]), fmt(r.get("db_cpu_s")),
                     fmt(r.get("longest_xact_s")), fmt(wal / 2**20, 1) if wal is not None else "–"]
            if any(s.get("load") for s in rows):
                ld = r.get("load") or {}
                cells += [f"{fmt(ld.get('p50_ms'), 1)} / {fmt(ld.get('p99_ms'), 1)}", str(ld.get("errors", "–"))]
            cells.append("–" if r.get("capped") else ("yes" if r.get("same_data") else "**no**"))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        for r in rows:
            if r.get("note"):
                out.append(f"- `{r['contender']}`: {r['note']}.")
        if any(r.get("note") for r in rows):
            out.append("")
        if idle and db == "postgres" and any(r.get("load") for r in rows):
            end = report.get("idle_load_end")
            out.append(f"Idle load (no migration, {report['load_rate']} transactions/s, half single-row reads "
                       f"and half single-row writes of `customers`): p50 {idle['p50_ms']} ms, p99 "
                       f"{idle['p99_ms']} ms, {idle['errors']} errors at the start"
                       + (f"; p50 {end['p50_ms']} ms, p99 {end['p99_ms']} ms, {end['errors']} errors at the end"
                          if end else "") + ". The targets compare with the lower p99.")
            out.append("")
    out.append("Contenders:")
    out.append("")
    whats = {}
    for r in report["results"]:
        whats.setdefault(r["contender"], r["what"])
    for label, what in whats.items():
        out.append(f"- `{label}`: {what}.")
    out.append("")
    if report.get("kills"):
        out.append("## Killed halfway (`kill -9`), then started again (PostgreSQL, no load)")
        out.append("")
        out.append("| contender | killed after s | rows done at the kill | finish after restart s | total s "
                   "(uninterrupted) | row updates beyond the rows to change | same data |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for k in report["kills"]:
            ended = " (it had ended: no test)" if k.get("ended_before_kill") else ""
            out.append(f"| {k['contender']} | {k['killed_after_s']}{ended} | {k['done_at_kill']:,} | "
                       f"{k['finish_after_restart_s']} | {k['total_s']} ({k['uninterrupted_s']}) | "
                       f"{k['updated_twice_or_rolled_back']:,} | {'yes' if k['same_data'] else '**no**'} |")
        out.append("")
        out.append("Row updates beyond the rows to change count updates rolled back by the kill or made twice "
                   "(`n_tup_upd` of the table against the rows rewritten).")
        out.append("")
    if report.get("offset"):
        out.append("## The naive OFFSET/LIMIT script (PostgreSQL, no load)")
        out.append("")
        out.append("| rows | seconds | rows/s | peak RSS MiB | same data |")
        out.append("| ---: | ---: | ---: | ---: | --- |")
        for o in report["offset"]:
            rate = f"{o['rows'] // 3 / o['seconds']:,.0f}" if o["finished"] else "–"
            if o.get("done"):
                rate = f"{o['done'] / o['seconds']:,.0f} ({o['done']:,} rows done)"
            out.append(f"| {o['rows']:,} | {o['seconds']}{'' if o['finished'] else ' (stopped at the cap)'} | {rate} | "
                       f"{o['peak_rss_mib']} | {'yes' if o['same_data'] else ('–' if o['same_data'] is None else '**no**')} |")
        out.append("")
    if report.get("same_across_databases"):
        agree = all(report["same_across_databases"].values())
        out.append(f"The single statement's final data {'are' if agree else 'are **not**'} the same on every "
                   "database (one checksum of `id:phone` in key order).")
        out.append("")
    return "\n".join(out) + "\n"


def main(path):
    path = Path(path)
    report = json.loads(path.read_text())
    path.with_suffix(".svg").write_text(svg(report))
    md = markdown(report, path.with_suffix(".svg").name)
    notes = path.with_suffix(".notes.md")
    if notes.exists():
        md += "\n" + notes.read_text()
    path.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main(sys.argv[1])
