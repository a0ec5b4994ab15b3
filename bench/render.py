#!/usr/bin/env python
"""Render bench results JSON as Markdown (for the README's performance section).

python bench/render.py [bench/results/latest.json] > perf.md
"""

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def fmt(value, digits=0):
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def row_for(config_name, case, kind, run, ratio):
    label = f"{config_name} | {case} | {kind}"
    if run.get("status") != "ok" and "rps" not in run:
        reason = run.get("reason", run.get("status", ""))
        return f"| {label} | {run.get('status')} | | | | | | | | | | {reason} |"
    lat = run["latency_ms"]
    ratio_text = fmt(ratio, 2) if ratio is not None else ""
    notes = [] if run["status"] == "ok" else [run.get("reason", "")]
    notes += run.get("caveats", [])
    if run.get("attempts", 1) > 1:
        notes.append(f"attempt {run['attempts']} (earlier attempts had one busy worker)")
    cores = run.get("cpu_cores", {})
    each = "+".join(f"{c:.2f}" for c in cores.get("workers_each", {}).values())
    non2xx = run["non2xx"]
    return (
        f"| {label} | {fmt(run['rps'])} | {fmt(run['rows_per_s'])} | {fmt(lat['p50'], 2)} | "
        f"{fmt(lat['p99'], 2)} | {fmt(run['rss_peak_mib'], 1)} | "
        f"{fmt(run.get('server_cpu_ms_per_request'), 2)} | {each} | {fmt(cores.get('other'), 2)} | "
        f"{ratio_text} | {non2xx} | {'; '.join(notes)} |"
    )


def render(report):
    settings = report["settings"]
    machine = report["machine"]
    lines = [
        f"mlapi bench, {report['generated_at']} (commit {report.get('git_commit')}), "
        f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['wrk']}; "
        f"{settings['duration_s']} s per case after {settings['warmup_s']} s warm-up, "
        f"{settings['connections']} connections, loopback.",
        "",
        "| config | case | server | req/s | rows/s | p50 ms | p99 ms | peak RSS/worker MiB "
        "| server CPU ms/req | worker cores | other cores | mlapi/bare req/s | non-2xx | note |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for cname, config in report["configs"].items():
        for case, runs in config["cases"].items():
            ratio = runs.get("ratio_vs_bare", {}).get("throughput")
            for kind in ("mlapi", "bare"):
                if kind in runs:
                    lines.append(
                        row_for(cname, case, kind, runs[kind], ratio if kind == "mlapi" else None)
                    )
    lines += [
        "",
        "worker cores: CPU cores each gunicorn worker used during the case (uneven = the "
        "connections landed on one worker); other cores: CPU used meanwhile by anything but "
        "the workers, wrk, redis-server and the bench itself (noise from other work on the "
        "machine).",
        "",
        "Cases:",
        "",
    ]
    for case, title in report.get("case_titles", {}).items():
        lines.append(f"- **{case}**: {title}")
    lines += ["", "Configurations:", ""]
    for cname, config in report["configs"].items():
        lines.append(
            f"- **{cname}**: {config['description']} "
            f"({config['workers']} worker(s) x {config['threads']} threads)"
        )
    lines += [
        "",
        "| goal | config | value | threshold | result | detail |",
        "|---|---|--:|--:|---|---|",
    ]
    for goal in report["goals"]:
        value = goal["value"]
        value_text = "–" if value is None else f"{value}"
        result = goal["status"].upper()
        lines.append(
            f"| {goal['goal']} | {goal['config']} | {value_text} | {goal['threshold']} | {result} "
            f"| {goal['detail']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT
    sys.stdout.write(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main(sys.argv)
