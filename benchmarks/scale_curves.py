"""The curves of a ``benchmarks/synth_scale.py`` run, and what they say a larger run would cost.

A run shorter than the one it stands for (20k samples for ``synthesize --n 100000``) is honest only if
its curves are straight: the rate steady from window to window, the resident memory flat in the
samples written, the disk linear. This module joins the looks of every sitting into one curve (wall
time summed over sittings), measures those three things, projects them to ``--to`` samples and draws
them (``OUT/scale.png``).

Usage::

    python benchmarks/scale_curves.py runs/synth-20k --to 100000     # reads and extends OUT/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def joined_curve(sittings: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every look of every sitting, in order, its time shifted by the wall time of the sittings before it:
    ``[{"wall_s", "samples", "rss_mib", "disk_mib"}, ...]`` (``disk_mib`` None in looks recorded without it)."""
    points, offset = [], 0.0
    for sitting in sittings:
        for look in sitting.get("looks", []):
            points.append({"wall_s": round(offset + look["s"], 1), "samples": look["samples"],
                           "rss_mib": look["rss_mib"], "disk_mib": look.get("disk_mib")})
        offset += sitting["wall_s"]
    return points


def window_rates(points: list[dict[str, float]], windows: int = 10) -> list[dict[str, float]]:
    """Samples per second in ``windows`` equal spans of the samples written: ``[{"samples", "per_s"}]``,
    ``samples`` the span's end. A span crossing two sittings counts the time of both (their start-ups too)."""
    if len(points) < 2 or points[-1]["samples"] <= points[0]["samples"]:
        return []
    first, last = points[0]["samples"], points[-1]["samples"]
    edges = [first + (last - first) * k / windows for k in range(windows + 1)]
    rates, start = [], points[0]
    for edge in edges[1:]:
        end = next(p for p in points if p["samples"] >= edge)
        if end["samples"] > start["samples"] and end["wall_s"] > start["wall_s"]:
            rates.append({"samples": end["samples"],
                          "per_s": round((end["samples"] - start["samples"]) / (end["wall_s"] - start["wall_s"]), 3)})
            start = end
    return rates


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ys against xs (slope 0 when xs do not vary)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return my - slope * mx, slope


def projected(result: dict[str, Any], points: list[dict[str, float]], to: int) -> dict[str, Any]:
    """What ``to`` samples would cost at the measured rates: wall and CPU time (the timed sittings' rates),
    disk (bytes per sample), and the resident memory's line in the samples (after the first 1,000: start-up
    fills the model and the writer's queue first) with its value at ``to``. ``rate_spread`` is the largest
    window rate over the smallest (1 when the rate is steady)."""
    windows = window_rates(points)
    rates = [w["per_s"] for w in windows]
    steady = [p for p in points if p["samples"] >= 1000] or points
    intercept, slope = line_fit([p["samples"] for p in steady], [p["rss_mib"] for p in steady]) if steady else (0.0, 0.0)
    per_s, per_cpu_s, per_sample = result.get("samples_per_s"), result.get("samples_per_cpu_s"), result.get("bytes_per_sample")
    return {"to": to,
            "wall_h": round(to / per_s / 3600, 2) if per_s else None,
            "cpu_h": round(to / per_cpu_s / 3600, 2) if per_cpu_s else None,
            "disk_gib": round(to * per_sample / 2**30, 2) if per_sample else None,
            "rss_mib_per_10k": round(slope * 10_000, 1),
            "rss_mib_at_to": round(intercept + slope * to, 1),
            "rate_spread": round(max(rates) / min(rates), 3) if rates and min(rates) > 0 else None,
            "window_rates": windows}


def draw(points: list[dict[str, float]], proj: dict[str, Any], path: Path) -> None:
    """Three panels against the samples written: the rate per window, the resident memory, the disk
    (with its line to ``to`` samples). Written atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    rate_ax, rss_ax, disk_ax = fig.subplots(1, 3)
    windows = proj["window_rates"]
    rate_ax.plot([w["samples"] for w in windows], [w["per_s"] for w in windows], "o-")
    rate_ax.set(xlabel="samples written", ylabel="samples/s (wall, per window)", ylim=(0, None))
    rss_ax.plot([p["samples"] for p in points], [p["rss_mib"] for p in points], label="measured")
    per_sample = proj["rss_mib_per_10k"] / 10_000
    rss_ax.plot([1000, proj["to"]], [proj["rss_mib_at_to"] - per_sample * (proj["to"] - 1000), proj["rss_mib_at_to"]],
                "--", label=f"its line to {proj['to']:,}")
    rss_ax.legend()
    rss_ax.set(xlabel="samples written", ylabel="resident memory (MiB, all ranks)", ylim=(0, None),
               title=f"{proj['rss_mib_per_10k']:+.1f} MiB per 10k samples")
    disk = [p for p in points if p.get("disk_mib") is not None]
    disk_ax.plot([p["samples"] for p in disk], [p["disk_mib"] / 1024 for p in disk], label="measured")
    if proj["disk_gib"] is not None:
        disk_ax.plot([0, proj["to"]], [0, proj["disk_gib"]], "--", label=f"{proj['to']:,} at the measured size")
    disk_ax.set(xlabel="samples written", ylabel="shards on disk (GiB)")
    disk_ax.legend()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def add_projection(result: dict[str, Any], out: Path, to: int) -> dict[str, Any]:
    """Put the projection of ``result`` (a scale.json's content) to ``to`` samples into ``result["projected"]``
    and draw ``out/scale.png``; the projection. The caller writes ``result``."""
    points = joined_curve(result["sittings"])
    result["projected"] = projected(result, points, to)
    if len(points) >= 2:
        draw(points, result["projected"], out / "scale.png")
    return result["projected"]


def extend(out: Path, to: int) -> dict[str, Any]:
    """Add the projection to ``out/scale.json`` (written atomically) and draw ``out/scale.png``; the projection."""
    result = json.loads((out / "scale.json").read_text())
    proj = add_projection(result, out, to)
    tmp = out / "scale.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out / "scale.json")
    return proj


def summary(proj: dict[str, Any]) -> str:
    """One line of the projection, for a table's caption."""
    spread = f", window rates within {proj['rate_spread']:.2f}x" if proj["rate_spread"] else ""
    return (f"projected to {proj['to']:,}: {proj['wall_h']} h wall, {proj['cpu_h']} CPU h, {proj['disk_gib']} GiB, "
            f"memory {proj['rss_mib_per_10k']:+.1f} MiB per 10k samples ({proj['rss_mib_at_to']:.0f} MiB at "
            f"{proj['to']:,}){spread}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a synth_scale.py --out folder (its scale.json)")
    ap.add_argument("--to", type=int, default=100_000, help="the run size to project to")
    args = ap.parse_args(argv)
    if not (args.out / "scale.json").is_file():
        print(f"scale_curves: {args.out / 'scale.json'} not found (run benchmarks/synth_scale.py first)", file=sys.stderr)
        return 2
    print(summary(extend(args.out, args.to)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
