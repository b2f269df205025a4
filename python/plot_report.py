#!/usr/bin/env python3
"""Draws the accuracy-against-eps plot of a robustness report (`bulwark eval --report`).

    python3 python/plot_report.py RUN/report.json RUN/report.svg

Reads the report's rows (each attack at the evaluation's eps), its eps sweep (the same attacks at
other radii) and its suite (at the evaluation's eps and, when swept, at the others), and draws one
line per attack plus the clean accuracy, as a deterministic SVG (no date, a fixed hash salt, text
kept as text) with matplotlib (Debian's python3-matplotlib). Exit code 3 when matplotlib is absent.
"""
import collections
import json
import sys


def series(report):
    """{name: [(eps, accuracy), ...]} in eps order, and the clean accuracy (or None)."""
    points = collections.OrderedDict()
    clean = None
    eps = report["eps"]
    for row in report.get("attacks", []):
        if row["attack"] == "clean":
            clean = row["accuracy"]
            continue
        points.setdefault(row["attack"], []).append((eps, row["accuracy"]))
    for row in report.get("eps_sweep", []):
        points.setdefault(row["attack"], []).append((row["eps"], row["accuracy"]))
    suite = report.get("suite")
    if suite:
        name = f"suite {suite['name']}"
        points.setdefault(name, []).append((eps, suite["robust_acc"]))
        for row in report.get("suite_sweep", []):
            points[name].append((row["eps"], row["robust_acc"]))
    return {k: sorted(set(v)) for k, v in points.items()}, clean


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        import matplotlib
    except ImportError:
        print("plot_report.py: matplotlib is not installed (Debian: apt-get install python3-matplotlib)", file=sys.stderr)
        return 3
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "bulwark"
    matplotlib.rcParams["svg.fonttype"] = "none"
    with open(argv[1]) as f:
        report = json.load(f)
    lines, clean = series(report)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if clean is not None:
        ax.axhline(100 * clean, color="#777777", linewidth=1.2, linestyle=(0, (4, 3)), label="clean")
    for name, pts in lines.items():
        ax.plot([e for e, _ in pts], [100 * a for _, a in pts], marker="o", markersize=3.5, linewidth=1.6, label=name)
    ax.axvline(report["eps"], color="#bbbbbb", linewidth=0.8)
    norm = "L2" if report.get("norm") == "l2" else "L-inf"
    ax.set_xlabel(f"{norm} eps (vertical line: the evaluation's)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{report['model']} on {report['dataset']}, {report['samples']} samples", fontsize=11)
    ax.grid(color="#eeeeee")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(argv[2], format="svg", metadata={"Date": None})
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
