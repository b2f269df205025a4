#!/usr/bin/env python3
"""The default-job comparison page (docs/results/default_job.md) from the runs' small files.

Usage: make_default_job_page.py --runs docs/results/default_job --out docs/results/default_job.md
"""
import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for label in sorted(os.listdir(a.runs)):
        d = os.path.join(a.runs, label)
        ev = json.load(open(os.path.join(d, "eval.json")))
        cfg = json.load(open(os.path.join(d, "config.json")))
        wall = float(open(os.path.join(d, "wall_seconds")).read())
        acc = {x["attack"].split("-")[0]: x["accuracy"] for x in ev["attacks"]}
        pgd = next(x for x in ev["attacks"] if x["attack"].startswith("PGD"))
        sq = next(x for x in ev["attacks"] if x["attack"].startswith("Square"))
        summary = json.load(open(os.path.join(d, "summary.json")))
        if summary.get("stopped_at_epoch", -1) >= 0:
            label += f" (the guard stopped it at epoch {summary['stopped_at_epoch']})"
        rows.append((min(pgd["accuracy"], sq["accuracy"]), label, cfg, wall, acc["clean"], pgd, sq, ev))
    rows.sort(key=lambda r: -r[0])
    lines = [
        "# The default job: which candidate",
        "",
        "Made by `bench/results/default_job.sh` (the small files of every run are in",
        "`docs/results/default_job/`). Every candidate trains wong_small on Fashion-MNIST at eps 0.1 for",
        "5 epochs on 2 threads, seed 0, and is evaluated by `bulwark eval` on the first 1,000 test images.",
        "Ranked by min(PGD-50x10, Square-5000): Square uses no gradients, so a model whose PGD figure it",
        "undercuts is gradient-masked. The first row is `bulwark train`'s default. The previous default,",
        "fgsm-rs-accelat, ran AccelAT, which cannot decay before epoch 7 with its window and cool-down of 5:",
        "in 5 epochs it was a constant rate. A candidate stopped early was stopped by FGSM-RS's",
        "catastrophic-overfitting guard and keeps the previous epoch's model.",
        "",
        "| candidate | method | schedule | lr | train s | clean | PGD-50x10 | Square-5000 | min | masking checks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for best, label, cfg, wall, clean, pgd, sq, ev in rows:
        flags = [c["check"] for c in ev.get("masking_checks", []) if c["fired"]]
        lines.append(
            f"| {label} | {cfg['method']['name']} | {cfg['schedule']['name']} | {cfg['optimizer']['lr']:g} | "
            f"{wall:.0f} | {100 * clean:.1f} | {100 * pgd['accuracy']:.1f} | {100 * sq['accuracy']:.1f} | "
            f"{100 * best:.1f} | {', '.join(flags) if flags else 'none fired'} |")
    lines.append("")
    for best, label, cfg, wall, clean, pgd, sq, ev in rows:
        path = os.path.join(a.runs, label.split(" ")[0], "autoattack.json")
        if not os.path.exists(path):
            continue
        aa = json.load(open(path))["suite"]
        steps = ", ".join(f"{s['attack']} {100 * s['robust_acc']:.1f}%" for s in aa["steps"])
        lines += [f"AutoAttack (`bulwark eval --suite autoattack`, the same 1,000 images) on {label}: "
                  f"{100 * aa['robust_acc']:.1f}% robust (clean {100 * aa['clean_acc']:.1f}%; after each attack: "
                  f"{steps}; {aa['seconds']:.0f} s).", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
