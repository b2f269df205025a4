#!/usr/bin/env python3
"""docs/results.md and its SVG plots, from the run directories of bench/results/adversarial.sh.

Reads <runs>/<study>/<dataset>/<method>-<shape>/ for the studies `table`, `long`, `paper` and
`cifar`: config.json (the resolved options), metrics.jsonl (one line per epoch), summary.json
(passes, CPU time, the trainer's PGD-20 test) and, for the runs a study evaluates, eval.json
(`bulwark eval`: clean, PGD-50x10, CW-20, FGSM and the AutoAttack suite). The best fixed shape of a method is chosen by robust validation accuracy
only (`--select` prints the choice for the script). Writes the sweep and test tables, the papers'
claims checked against the numbers, and the plots (matplotlib: Debian's python3-matplotlib).
"""
import argparse
import collections
import json
import os
import sys

METHODS = ["standard", "pgd", "pgd40", "fgsm-rs", "free", "mplus-deat", "mplus-pgd"]
LABELS = {"standard": "standard", "pgd": "PGD-AT", "pgd40": "PGD-AT k=40", "fgsm-rs": "FGSM-RS",
          "free": "Free-AT", "mplus-deat": "M+DEAT", "mplus-pgd": "M+PGD"}
COLORS = {"standard": "#777777", "pgd": "#1f77b4", "pgd40": "#17becf", "fgsm-rs": "#ff7f0e", "free": "#2ca02c",
          "mplus-deat": "#d62728", "mplus-pgd": "#9467bd"}
SHAPES = ["constant", "piecewise", "multistep", "cyclic", "cyclic-restart", "one-cycle"]
# AccelAT from the paper's lr0 (1e-3, the base rate of every fixed shape) and from 1e-2, the
# one-cycle shape's peak: AccelAT can only lower its rate, so it is also given the higher start.
ACCELAT = ["accelat", "accelat-1e-2"]
ACCELAT_NAMES = {"accelat": "AccelAT", "accelat-1e-2": "AccelAT from 1e-2"}
DASHES = {"accelat": "5,3", "accelat-1e-2": "1.5,2.5"}
SHAPE_COLORS = {"constant": "#777777", "piecewise": "#1f77b4", "multistep": "#2ca02c", "cyclic": "#ff7f0e",
                "cyclic-restart": "#9467bd", "one-cycle": "#8c564b", "accelat": "#d62728", "accelat-1e-2": "#e377c2"}
DATASETS = {"mnist": ("MNIST", "0.3"), "fashion-mnist": ("Fashion-MNIST", "0.1"),
            "cifar10": ("CIFAR-10 (JPEG copy)", "8/255")}
# How each checked claim came out, (claim, protocol, outcome) -> count, for the summary above the
# details; PROTOCOL[0] names the study being read.
VERDICTS = collections.Counter()
PROTOCOL = ["ours"]
PROTOCOLS = {"table": "our protocol (5,000 images, Adam, 10 epochs)", "long": "our protocol over 30 epochs",
             "paper": "the papers' protocol (all of Fashion-MNIST, SGD, multistep)",
             "cifar": "CIFAR-10 (JPEG copy), cnn7, the papers' optimizer"}


def read_json(path, name):
    with open(os.path.join(path, name)) as f:
        return json.load(f)


def load_run(path):
    run = {"config": read_json(path, "config.json"), "summary": read_json(path, "summary.json"), "path": path}
    if os.path.exists(os.path.join(path, "eval.json")):
        run["eval"] = read_json(path, "eval.json")
    with open(os.path.join(path, "metrics.jsonl")) as f:
        run["epochs"] = [json.loads(line) for line in f if line.strip()]
    return run


def load_study(study_dir):
    """{dataset: {(method, shape): run}} for every finished run of a study."""
    out = {}
    if not os.path.isdir(study_dir):
        return out
    for ds in sorted(os.listdir(study_dir)):
        for name in sorted(os.listdir(os.path.join(study_dir, ds))):
            path = os.path.join(study_dir, ds, name)
            if not os.path.exists(os.path.join(path, "summary.json")):
                continue
            for shape in SHAPES + ACCELAT:
                if name.endswith("-" + shape) and name[: -len(shape) - 1] in METHODS:
                    out.setdefault(ds, {})[(name[: -len(shape) - 1], shape)] = load_run(path)
    return out


def kept_epoch(run):
    """The metrics line of the model a run keeps: its last epoch, or the one before the epoch at
    which the overfitting guard stopped it (the guard reloads that checkpoint)."""
    kept = run["summary"].get("epochs_completed", len(run["epochs"]))
    return next((m for m in run["epochs"] if m["epoch"] == kept), run["epochs"][-1])


def kept_robust_val(run):
    return kept_epoch(run).get("robust_val_acc", -1)


def choose_shapes(runs, shapes=SHAPES):
    """{method: shape}: the fixed shape whose kept model has the best robust validation accuracy;
    ties go to the better clean validation accuracy (what decides for standard training, whose
    robust accuracy is 0 under every shape), then to the shape listed first. The k=40 PGD-AT runs
    follow PGD-AT's choice."""
    best = {}
    for (m, shape), run in runs.items():
        if shape not in shapes or m == "pgd40":
            continue
        rank = (kept_robust_val(run), kept_epoch(run).get("val_acc", -1), -shapes.index(shape))
        if m not in best or rank > best[m][0]:
            best[m] = (rank, shape)
    return {m: v[1] for m, v in best.items()}


def shape_name(shape):
    return ACCELAT_NAMES.get(shape, shape)


def schedule_text(cfg):
    s = cfg["schedule"]
    if s["name"] == "multistep":
        return "multistep " + ",".join(f"{m:g}" for m in s["milestones"])
    return s["name"]


def best_robust_val(run):
    """(accuracy, epoch) of the best robust validation accuracy a run reached."""
    best = max(run["epochs"], key=lambda m: m.get("robust_val_acc", -1))
    return best.get("robust_val_acc", -1), best["epoch"]


def epochs_to_reach(epochs, target):
    for m in epochs:
        if m.get("robust_val_acc", -1) >= target:
            return m["epoch"]
    return None


def pct(x):
    return f"{100 * x:.1f}"


def polyline_svg(series, title, ylabel, path, log_y=False):
    """series: list of (label, color, dash pattern "on,off" or None, [(x, y), ...]). A line chart per
    epoch, drawn by matplotlib into a deterministic SVG (no date, a fixed hash salt, text as text)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "bulwark"
    matplotlib.rcParams["svg.fonttype"] = "none"
    drawn = [(label, color, dash, [p for p in ps if not (log_y and p[1] <= 0)]) for label, color, dash, ps in series]
    if not any(ps for _, _, _, ps in drawn):
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, color, dash, ps in drawn:
        if not ps:
            continue
        style = {"linestyle": (0, tuple(float(v) for v in dash.split(",")))} if dash else {}
        ax.plot([x for x, _ in ps], [y for _, y in ps], color=color, linewidth=1.8, label=label, **style)
    if log_y:
        ax.set_yscale("log")
    epochs = sorted({int(x) for _, _, _, ps in drawn for x, _ in ps})
    ax.set_xticks(epochs if len(epochs) <= 20 else epochs[::max(1, len(epochs) // 10)])
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(color="#eeeeee")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return True


def sweep_table(runs, chosen, methods):
    """Markdown rows: the kept model's robust validation accuracy per method and shape."""
    cols = SHAPES + ACCELAT
    rows = ["| method | " + " | ".join(shape_name(c) for c in cols) + " |",
            "|---|" + "---:|" * len(cols)]
    for m in methods:
        cells = []
        for c in cols:
            r = runs.get((m, c))
            cell = pct(kept_robust_val(r)) if r else "-"
            cells.append(f"**{cell}**" if chosen.get(m) == c and r else cell)
        rows.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return rows


def autoattack_acc(e):
    """The AutoAttack suite's robust accuracy of an eval.json, None where it was not run."""
    suite = e.get("suite")
    return suite["robust_acc"] if suite and suite.get("name") == "autoattack" else None


def robust_acc(e):
    """The figure a run is judged by: the lowest of PGD-50x10 and AutoAttack."""
    aa = autoattack_acc(e)
    return e["pgd_acc"] if aa is None else min(e["pgd_acc"], aa)


TEST_HEADER = ["| method | schedule | epochs | clean | PGD-50x10 | AutoAttack | CW-20 | FGSM | fwd+bwd passes | CPU min |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]


def test_row(m, label, r):
    e, s = r["eval"], r["summary"]
    stopped = f" (guard stopped at {s['stopped_at_epoch']})" if s.get("stopped_at_epoch", -1) > 0 else ""
    aa = autoattack_acc(e)
    return (f"| {LABELS[m]} | {label} | {s['epochs_completed']}{stopped} | {pct(e['clean_acc'])} | "
            f"{pct(e['pgd_acc'])} | {'-' if aa is None else pct(aa)} | {pct(e['cw_acc'])} | {pct(e['fgsm_acc'])} | "
            f"{s['fwd_passes'] + s['bwd_passes']:,} | {s.get('cpu_seconds', 0) / 60:.1f} |")


def disagreements(ds_name, evaluated, runs):
    """Notes on the runs where AutoAttack and PGD-50x10 differ by more than a point."""
    out = []
    for m, shape in evaluated:
        e = runs[(m, shape)]["eval"]
        aa = autoattack_acc(e)
        if aa is not None and abs(aa - e["pgd_acc"]) > 0.01:
            out.append(f"- {ds_name}, {LABELS[m]} {shape_name(shape)}: AutoAttack leaves {pct(aa)}%, PGD-50x10 "
                       f"{pct(e['pgd_acc'])}% ({100 * (aa - e['pgd_acc']):+.1f} points): "
                       + ("PGD-50x10 overstates this model's robustness." if aa < e["pgd_acc"] else
                          "AutoAttack's fixed budget found less than PGD's ten restarts here."))
    return out


def accelat_claim(ds_name, m, winner, shape, accel, accel_shape):
    target, ef = best_robust_val(winner)
    ea = epochs_to_reach(accel["epochs"], target)
    decays = int(accel["epochs"][-1].get("accelat_decays", 0))
    name = shape_name(accel_shape)
    reach = f"is reached at epoch {ea} with {name}" if ea else f"is never reached with {name} within the budget"
    verdict = ""
    if ea:
        verdict = f" ({ef / ea:.2f}x fewer epochs)" if ea < ef else (" (the same epoch)" if ea == ef else " (later)")
    VERDICTS[("accelat", PROTOCOL[0], "fewer epochs" if ea and ea < ef else "the same epoch" if ea == ef else
              "later" if ea else "never")] += 1
    return (f"- {ds_name}, {LABELS[m]}: the best fixed schedule ({shape}) reaches its best robust validation "
            f"accuracy, {pct(target)}%, at epoch {ef}; that accuracy {reach}{verdict}; it decayed the rate "
            f"{decays} time(s).")


def deat_claim(where, deat, pgd, pgd_name, time_ratio=None):
    """The DEAT claim on one pair of runs: M+DEAT within a point of PGD-AT's robust accuracy (the lower
    of PGD-50x10 and AutoAttack) at fewer passes, or, given time_ratio, in at most that share of its
    CPU time (the paper's "PGD-7's robustness in 0.65x its time")."""
    gap = 100 * (robust_acc(deat["eval"]) - robust_acc(pgd["eval"]))
    dp = deat["summary"]["fwd_passes"] + deat["summary"]["bwd_passes"]
    pp = pgd["summary"]["fwd_passes"] + pgd["summary"]["bwd_passes"]
    dt, pt = deat["summary"].get("cpu_seconds", 0), pgd["summary"].get("cpu_seconds", 1)
    cost = dp < pp if time_ratio is None else dt <= time_ratio * pt
    holds = gap >= -1 and cost
    VERDICTS[("deat", PROTOCOL[0], "holds" if holds else "does not hold")] += 1
    return (f"- {where}: M+DEAT's robust accuracy (min of PGD-50x10 and AutoAttack) is {gap:+.1f} points from "
            f"{pgd_name}'s, with {dp / pp:.2f}x its passes and {dt / pt:.2f}x its CPU time: the DEAT claim "
            f"{'holds' if holds else 'does not hold'} here.")


def plot(series, title, ylabel, plot_dir, name, log_y=False):
    if polyline_svg(series, title, ylabel, os.path.join(plot_dir, name), log_y):
        return [f"![{title}](results/{name})", ""]
    return []


def curve(run, key):
    return [(x["epoch"], x[key]) for x in run["epochs"] if x.get(key) is not None and x[key] >= 0]


def table_study(study, plot_dir):
    page, notes = [], []
    for ds, (ds_name, eps) in DATASETS.items():
        runs = study.get(ds)
        if not runs:
            continue
        methods = [m for m in METHODS if any(k[0] == m for k in runs)]
        chosen = choose_shapes(runs)
        cfg = next(iter(runs.values()))["config"]
        page += [f"### {ds_name}, eps {eps}, {cfg['model']}", "",
                 f"Training subset: the first {cfg['data']['train_size']} training images "
                 f"({cfg['data']['val_size']} held out for validation), batch {cfg['batch_size']}, "
                 f"{cfg['optimizer']['name']} lr {cfg['optimizer']['lr']:g}, {cfg['epochs']} epochs "
                 f"(Free-AT: epochs / m), one thread per run.", "",
                 "**The schedule sweep**: PGD-10 accuracy (%) of each run's final model on the "
                 f"{cfg['robust_val_size']} validation images. Bold: the fixed shape chosen for the test table.", ""]
        page += sweep_table(runs, chosen, [m for m in methods if m != "pgd40"]) + [""]
        evaluated = [(m, shape) for m in methods for shape in [chosen.get(m) or chosen.get("pgd")] + ACCELAT
                     if (m, shape) in runs and "eval" in runs[(m, shape)]]
        if evaluated:
            samples = runs[evaluated[0]]["eval"]["samples"]
            page += [f"**The test**: `bulwark eval` on the first {samples} test images at eps {eps}, eval mode, "
                     "for the chosen fixed shape and for both AccelAT runs.", "",
                     ] + TEST_HEADER
            page += [test_row(m, shape_name(shape) if shape in ACCELAT else schedule_text(runs[(m, shape)]["config"]),
                              runs[(m, shape)]) for m, shape in evaluated] + [""]

        # Claim 1 (DEAT paper): M+DEAT within 1 point of PGD-AT's robust accuracy at fewer passes.
        for label in ["fixed"] + ACCELAT:
            d = runs.get(("mplus-deat", chosen.get("mplus-deat") if label == "fixed" else label))
            p = runs.get(("pgd", chosen.get("pgd") if label == "fixed" else label))
            if d and p and "eval" in d and "eval" in p:
                notes.append(deat_claim(f"{ds_name}, {'best fixed schedules' if label == 'fixed' else shape_name(label)}",
                                        d, p, "PGD-AT"))
        notes += disagreements(ds_name, evaluated, runs)
        # Claim 2 (AccelAT paper), on the short budget.
        for m in methods:
            for a in ACCELAT:
                if m not in ("standard", "pgd40") and m in chosen and (m, a) in runs:
                    notes.append(accelat_claim(ds_name, m, runs[(m, chosen[m])], chosen[m], runs[(m, a)], a))
        # FGSM (one signed step from x itself) scoring above the clean accuracy: the step from x goes
        # the wrong way, a sign of a masked gradient at x that random-start PGD sees through.
        masked = [f"{LABELS[m]} {shape_name(shape)}" for m, shape in evaluated
                  if runs[(m, shape)]["eval"]["fgsm_acc"] > runs[(m, shape)]["eval"]["clean_acc"]]
        if masked:
            notes.append(f"- {ds_name}: FGSM accuracy above the clean accuracy for {', '.join(masked)}: the gradient "
                         "at x points away from the adversarial examples PGD finds from random starts (gradient "
                         "masking); the PGD-50x10 and CW-20 columns are the ones to read.")
        # AccelAT starts at lr0 and only lowers it, so until its first decay it is the constant schedule.
        same = [LABELS[m] for m in methods if (m, "accelat") in runs and (m, "constant") in runs
                and int(runs[(m, "accelat")]["epochs"][-1].get("accelat_decays", 0)) == 0
                and curve(runs[(m, "accelat")], "robust_val_acc") == curve(runs[(m, "constant")], "robust_val_acc")]
        if same:
            notes.append(f"- {ds_name}: AccelAT never decayed for {', '.join(same)}; those runs are the constant "
                         "schedule's, epoch for epoch (the same validation accuracies).")
        # The overfitting guard of FGSM-RS: what its probe saw.
        for m, shape in evaluated:
            r = runs[(m, shape)]
            if m != "fgsm-rs":
                continue
            probe = [x["guard_best"] for x in r["epochs"] if "guard_best" in x]
            if probe and r["summary"].get("stopped_at_epoch", -1) <= 0 and max(probe) < 0.3:
                notes.append(f"- {ds_name}, FGSM-RS {shape}: the guard's PGD-5 probe never rose above "
                             f"{pct(max(probe))}%, so the drop of 0.2 it watches for could not happen; the run "
                             f"never became robust rather than losing robustness.")

        for key, ylabel, fname, log_y in (("robust_val_acc", "PGD-10 validation accuracy", "robust_val", False),
                                          ("lr", "learning rate", "lr", True),
                                          ("r", "attack steps / replays r", "r", False)):
            series = [(f"{LABELS[m]} {shape_name(shape)}", COLORS[m], DASHES.get(shape),
                       curve(runs[(m, shape)], key))
                      for m, shape in evaluated]
            page += plot([s for s in series if s[3]], f"{ds_name}: {ylabel} per epoch (dashed: AccelAT, dotted: from 1e-2)", ylabel,
                         plot_dir, f"{ds}-{fname}.svg", log_y)
    return page, notes


def long_study(study, plot_dir):
    page, notes = [], []
    for ds, (ds_name, eps) in DATASETS.items():
        runs = study.get(ds)
        if not runs:
            continue
        cfg = next(iter(runs.values()))["config"]
        methods = [m for m in METHODS if any(k[0] == m for k in runs)]
        chosen = choose_shapes(runs)
        page += [f"### {ds_name}, eps {eps}, {cfg['model']}, {cfg['epochs']} epochs", "",
                 "Robust validation accuracy is PGD-10 on the validation images; the test column is the trainer's "
                 f"final PGD-{cfg['final_attack_steps']} on the first {cfg['final_attack_size']} test images. "
                 "Bold: the fixed shape chosen by the final model's robust validation accuracy.", "",
                 "| method | schedule | final robust val | best robust val (epoch) | clean test | PGD test | "
                 "fwd+bwd passes | CPU min |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            for shape in SHAPES + ACCELAT:
                r = runs.get((m, shape))
                if not r:
                    continue
                s = r["summary"]
                best, at = best_robust_val(r)
                name = shape_name(shape)
                name = f"**{name}**" if chosen.get(m) == shape else name
                page.append(f"| {LABELS[m]} | {name} | {pct(kept_robust_val(r))} | {pct(best)} ({at}) | "
                            f"{pct(s.get('test_acc', 0))} | {pct(s.get('test_robust_acc', 0))} | "
                            f"{s['fwd_passes'] + s['bwd_passes']:,} | {s.get('cpu_seconds', 0) / 60:.1f} |")
        page.append("")
        for m in methods:
            for a in ACCELAT:
                if m in chosen and (m, a) in runs:
                    notes.append(accelat_claim(f"{ds_name} ({cfg['epochs']} epochs)", m, runs[(m, chosen[m])],
                                               chosen[m], runs[(m, a)], a))
            for key, ylabel, fname, log_y in (("robust_val_acc", "PGD-10 validation accuracy", "robust_val", False),
                                              ("lr", "learning rate", "lr", True)):
                series = [(shape_name(shape), SHAPE_COLORS[shape], DASHES.get(shape),
                           curve(runs[(m, shape)], key)) for shape in SHAPES + ACCELAT if (m, shape) in runs]
                page += plot(series, f"{ds_name}, {LABELS[m]}, {cfg['epochs']} epochs: {ylabel} per epoch",
                             ylabel, plot_dir, f"long-{ds}-{m}-{fname}.svg", log_y)
    return page, notes


def protocol_study(study, plot_dir, tag):
    """The `paper` and `cifar` studies: one fixed protocol (multistep) and AccelAT per method, all evaluated."""
    page, notes = [], []
    for ds, (ds_name, eps) in DATASETS.items():
        runs = study.get(ds)
        if not runs:
            continue
        # The fixed protocol's options (a multistep run's, PGD-AT's when there is one).
        fixed = [r for (m, shape), r in sorted(runs.items(), key=lambda kv: kv[0][0] != "pgd") if shape == "multistep"]
        cfg = (fixed[0] if fixed else next(iter(runs.values())))["config"]
        methods = [m for m in METHODS if any(k[0] == m for k in runs)]
        evaluated = [(m, shape) for m in methods for shape in ("multistep", "accelat")
                     if (m, shape) in runs and "eval" in runs[(m, shape)]]
        train = (f"the first {cfg['data']['train_size']:,} training images" if cfg["data"]["train_size"]
                 else "the whole training split")
        pgd = runs.get(("pgd", "multistep"), {}).get("config", {}).get("method", {})
        page += [f"### {ds_name}, eps {eps}, {cfg['model']}, {cfg['epochs']} epochs", "",
                 f"Training: {train} ({cfg['data']['val_size']:,} held out for validation), batch {cfg['batch_size']}, "
                 f"{cfg['optimizer']['name']} lr {cfg['optimizer']['lr']:g}, momentum {cfg['optimizer'].get('momentum', 0):g}, "
                 f"weight decay {cfg['optimizer'].get('weight_decay', 0):g}, {schedule_text(cfg)} "
                 f"(AccelAT: from the same rate), no eps warm-up; PGD-AT is PGD-{pgd.get('steps', '?')} with step "
                 f"{pgd.get('alpha', 0):.4g}; Free-AT trains {runs.get(('free', 'multistep'), runs[next(iter(runs))])['config']['epochs']} "
                 "epochs of m replays. One thread per run.", ""]
        if evaluated:
            page += [f"`bulwark eval --suite autoattack` on the first {runs[evaluated[0]]['eval']['samples']:,} test "
                     f"images at eps {eps}:", ""] + TEST_HEADER
            page += [test_row(m, shape_name(shape) if shape == "accelat" else schedule_text(runs[(m, shape)]["config"]),
                              runs[(m, shape)]) for m, shape in evaluated] + [""]
        # Every run is single-threaded, so an evaluation's wall seconds bound its CPU seconds from above
        # (equal on an idle core).
        train_h = sum(r["summary"].get("cpu_seconds", 0) for r in runs.values()) / 3600
        eval_h = sum(sum(a.get("seconds", 0) for a in r["eval"].get("attacks", [])) +
                     r["eval"].get("suite", {}).get("seconds", 0) for r in runs.values() if "eval" in r) / 3600
        page += [f"CPU time of these runs: {train_h:.1f} h of training ({len(runs)} runs) and {eval_h:.1f} h of "
                 f"evaluation (wall time of single-thread runs, at least their CPU time; {len(evaluated)} of the runs "
                 f"evaluated).", ""]
        for shape in ("multistep", "accelat"):
            d, p = runs.get(("mplus-deat", shape)), runs.get(("pgd", shape))
            if d and p and "eval" in d and "eval" in p:
                notes.append(deat_claim(f"{ds_name} ({tag}), {shape_name(shape)}", d, p,
                                        f"PGD-{p['config']['method'].get('steps', '?')}", time_ratio=0.65))
        # Every cheaper method against PGD-AT under the fixed protocol: robustness given up, time saved.
        base = runs.get(("pgd", "multistep"))
        if base and "eval" in base:
            trade = [f"{LABELS[m]} {100 * (robust_acc(r['eval']) - robust_acc(base['eval'])):+.1f} points at "
                     f"{r['summary'].get('cpu_seconds', 0) / base['summary'].get('cpu_seconds', 1):.2f}x the CPU time"
                     for m in methods if m != "pgd" and "eval" in (r := runs.get((m, "multistep"), {}))]
            if trade:
                notes.append(f"- {ds_name} ({tag}), each method against PGD-AT, both multistep (robust accuracy: the "
                             f"lower of PGD-50x10 and AutoAttack): " + "; ".join(trade) + ".")
        for m in methods:
            if (m, "multistep") in runs and (m, "accelat") in runs:
                notes.append(accelat_claim(f"{ds_name} ({tag})", m, runs[(m, "multistep")], "multistep",
                                           runs[(m, "accelat")], "accelat"))
        notes += disagreements(f"{ds_name} ({tag})", evaluated, runs)
        for key, ylabel, fname, log_y in (("robust_val_acc", "PGD-10 validation accuracy", "robust_val", False),
                                          ("lr", "learning rate", "lr", True)):
            series = [(f"{LABELS[m]} {shape_name(shape)}", COLORS[m], DASHES.get(shape), curve(runs[(m, shape)], key))
                      for m in methods for shape in ("multistep", "accelat") if (m, shape) in runs]
            page += plot([x for x in series if x[3]], f"{ds_name} ({tag}): {ylabel} per epoch (dashed: AccelAT)",
                         ylabel, plot_dir, f"{tag}-{ds}-{fname}.svg", log_y)
    return page, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="the folder of the studies (table/, long/); with --select, one study")
    ap.add_argument("--out", help="the markdown page; plots go to <out dir>/results/")
    ap.add_argument("--select", action="store_true",
                    help="print 'dataset method shape' for the chosen fixed shape of each method and exit")
    ap.add_argument("--shapes", default=" ".join(SHAPES), help="with --select: the fixed shapes to choose from")
    args = ap.parse_args()
    if args.select:
        shapes = args.shapes.split()
        for ds, runs in load_study(args.runs).items():
            for m, shape in sorted(choose_shapes(runs, shapes).items()):
                print(ds, m, shape)
        return
    if not args.out:
        ap.error("--out is required unless --select is given")
    plot_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "results")
    os.makedirs(plot_dir, exist_ok=True)

    PROTOCOL[0] = "table"
    table_page, table_notes = table_study(load_study(os.path.join(args.runs, "table")), plot_dir)
    PROTOCOL[0] = "long"
    long_page, long_notes = long_study(load_study(os.path.join(args.runs, "long")), plot_dir)
    PROTOCOL[0] = "paper"
    paper_page, paper_notes = protocol_study(load_study(os.path.join(args.runs, "paper")), plot_dir, "paper")
    PROTOCOL[0] = "cifar"
    cifar_page, cifar_notes = protocol_study(load_study(os.path.join(args.runs, "cifar")), plot_dir, "cifar")
    if not table_page and not long_page:
        sys.exit(f"make_page.py: no finished runs under {args.runs}/table or {args.runs}/long")
    page = ["# Results: adversarial training with accelerated schedules", "",
            "Generated by `bench/results/make_page.py` from the run directories of `bench/results/adversarial.sh`;",
            "do not edit by hand. How the runs were made, and what they can and cannot show, is at the end.", ""]
    if table_page:
        page += ["## Every method, best fixed schedule and AccelAT (10 epochs)", "",
                 "Each method is trained under six fixed LR shapes (base rate 1e-3) and under AccelAT, from the "
                 "paper's 1e-3 and from 1e-2 (the one-cycle peak: AccelAT only ever lowers its rate). The fixed "
                 "shape whose final model has the best PGD-10 accuracy on the validation images is chosen, and "
                 "only it and the AccelAT runs are evaluated on the test images: the test set chooses nothing.", ""] + table_page
    if long_page:
        page += ["## AccelAT with room to decay (longer runs)", "",
                 "AccelAT's window (5) and cool-down (5) let it decay at epoch 7 at the earliest, so ten epochs "
                 "cannot show what it does. These runs repeat the sweep over 30 epochs for PGD-AT (both datasets) and FGSM-RS (Fashion-MNIST).",
                 ""] + long_page
    if paper_page:
        page += ["## The papers' own protocol (full Fashion-MNIST, SGD, x0.1 at 50% and 80%)", "",
                 "The DEAT paper's setting rather than ours: the whole training split, SGD 0.05 with momentum 0.9 and "
                 "weight decay 5e-4, the rate x0.1 at 50% and 80% of 10 epochs, PGD-7 with step eps/4, Free-8; each "
                 "method also under AccelAT from the same 0.05. Nothing is chosen, so every run is evaluated.", ""] + paper_page
    if cifar_page:
        page += ["## The seeds' dataset: CIFAR-10 (JPEG copy), cnn7", "",
                 "CIFAR-10 as decoded from a public JPEG copy (labels exact, pixels off by the JPEG loss: close to, "
                 "not equal to, the original's accuracies), on a subset and a budget this 2-core machine can train "
                 "(the CPU time it took is under each table).", ""] + cifar_page
    summary = []
    for key, protocol in PROTOCOLS.items():
        deat = {o: n for (c, p, o), n in VERDICTS.items() if c == "deat" and p == key}
        accel = {o: n for (c, p, o), n in VERDICTS.items() if c == "accelat" and p == key}
        if not deat and not accel:
            continue
        summary.append(f"- **{protocol}**:")
        if deat:
            test = ("within 1 point of PGD-AT's robust accuracy in at most 0.65x its CPU time"
                    if key in ("paper", "cifar") else "within 1 point of PGD-AT's robust accuracy at fewer passes")
            summary.append(f"  - DEAT's claim (M+DEAT {test}): holds in {deat.get('holds', 0)} of "
                           f"{sum(deat.values())} comparisons.")
        if accel:
            summary.append(f"  - AccelAT's claim (the best fixed schedule's robust validation accuracy in fewer epochs): "
                           f"in {accel.get('fewer epochs', 0)} of {sum(accel.values())} comparisons; at the same epoch "
                           f"in {accel.get('the same epoch', 0)}, later in {accel.get('later', 0)}, never within the "
                           f"budget in {accel.get('never', 0)}.")
    page += ["## The papers' claims, checked on these runs", ""] + summary + ["", "In detail:", ""]
    page += table_notes + long_notes + paper_notes + cifar_notes + [""]
    page += ["## How these numbers were made", "",
             "```sh",
             "cmake -S . -B build && cmake --build build -j2",
             "bench/results/adversarial.sh --study table   # the sweep, the choice, the test; then this page (resumable)",
             "bench/results/adversarial.sh --study long    # the 30-epoch sweep, PGD-AT and FGSM-RS",
             "bench/results/adversarial.sh --study paper   # the DEAT paper's protocol on all of Fashion-MNIST",
             "bench/results/adversarial.sh --study cifar   # CIFAR-10 (JPEG copy, ../shared/data), cnn7, 10,000 images",
             "python3 bench/results/make_page.py --runs docs/results/runs --out docs/results.md   # the page only",
             "```", "",
             "Each run is `bulwark train --model wong_small --optimizer adam --lr 1e-3 --method M --schedule S "
             "--eps-ramp 3 --train-size 5000 --epochs E --test-size 1000 --threads 1` (`--lr 1e-2` for AccelAT from "
             "1e-2); the table's chosen runs are "
             "then evaluated with `bulwark eval --checkpoint RUN --test-size 1000 --suite autoattack --json RUN/eval.json`. The exact "
             "options of every run are in its `config.json` under `docs/results/runs/` (with its `metrics.jsonl`, "
             "`summary.json` and, where evaluated, `eval.json`). PGD-AT uses k=10 and step 2.5 eps/k; on MNIST the "
             "paper's k=40, step 0.01 is run as well, under PGD-AT's chosen shape and AccelAT. Free-AT uses m=5 "
             "and trains E/m epochs. multistep is x0.1 at 50% and 80% of the run (DEAT's schedule), cyclic is "
             "Fast-AT's triangle peaking at 40%, cyclic-restart, piecewise and one-cycle are the AccelAT paper's "
             "comparison shapes; the range test is left out because it searches for a rate rather than trains. "
             "CPU minutes are the training process's CPU time (per-epoch validation included, final evaluation "
             "excluded).", "",
             "For the AutoAttack column, the table's evaluated runs were trained again "
             "(`bench/results/adversarial.sh --study table --evaluated-only`) and evaluated with `--suite autoattack`. "
             "The CPU kernels' summation order has changed since the sweep was first trained, so these runs are "
             "close to, not bitwise equal to, the first ones: the sweep table mixes both, and a method prone to "
             "catastrophic overfitting (FGSM-RS) can land several points apart. The choice of fixed shape was made on "
             "the first sweep and stands.", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(page))
    print(f"wrote {args.out} and the plots in {plot_dir}")


if __name__ == "__main__":
    main()
