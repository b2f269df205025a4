#!/usr/bin/env python3
"""Resource usage of every CUDA kernel, as ptxas reports it (registers, spills, shared memory).

Compiles each kernels/cuda/*.cu for each architecture asked with `-Xptxas -v` and prints a markdown
table per architecture, one row per kernel (template instantiations included). Exits 1 when any kernel spills,
so it doubles as a check. Needs nvcc only, not a GPU.

    python3 bench/ptxas_report.py                 # sm_90, table on stdout
    python3 bench/ptxas_report.py --arch sm_80,sm_90  # both targets of the build, one table each
    cmake --build build --target ptxas-report     # the same, written to build/ptxas_sm_90.md
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def short(name):
    # "void bulwark::cuda::(anonymous namespace)::foo<...>(args)" -> "foo<...>"
    name = re.sub(r"^void ", "", name)
    name = name.replace("bulwark::cuda::", "").replace("(anonymous namespace)::", "")
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut]


def report(cu, arch, nvcc):
    cmd = [nvcc, "-std=c++20", f"-arch={arch}", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-I", ROOT,
           "-c", cu, "-o", os.devnull]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"nvcc failed on {cu}:\n{res.stderr}")
    rows, current = [], None
    for line in res.stderr.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = {"mangled": m.group(1)}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None and "stack" in current:
            # "Used R registers[, used B barriers][, S bytes cumulative stack size][, M bytes smem]..."
            smem = re.search(r"(\d+) bytes smem", line)
            current.update(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
            rows.append(current)
            current = None
    for row, name in zip(rows, demangle([r["mangled"] for r in rows])):
        row["name"] = short(name)
        row["file"] = os.path.relpath(cu, ROOT)
    return rows


def table(rows, arch):
    """The markdown table of one architecture, its summary line, and the rows that spill."""
    lines = [f"| kernel ({arch}) | file | registers | spill stores | spill loads | static smem | stack |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["file"], r["name"])):
        lines.append(f"| `{r['name']}` | {r['file']} | {r['regs']} | {r['spill_st']} | {r['spill_ld']} | "
                     f"{r['smem']} | {r['stack']} |")
    worst = max(rows, key=lambda r: r["regs"]) if rows else None
    spills = [r for r in rows if r["spill_st"] or r["spill_ld"]]
    lines.append("")
    lines.append(f"{arch}: {len(rows)} kernels; most registers: {worst['regs']} (`{worst['name']}`); "
                 f"kernels that spill: {len(spills)}." if worst else f"{arch}: no kernels found")
    return lines, spills


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90", help="one architecture or a comma list (sm_80,sm_90)")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--out", help="write the table here instead of stdout")
    args = ap.parse_args()
    lines, spills = [], []
    for arch in args.arch.split(","):
        rows = []
        for cu in sorted(glob.glob(os.path.join(ROOT, "kernels", "cuda", "*.cu"))):
            rows += report(cu, arch, args.nvcc)
        arch_lines, arch_spills = table(rows, arch)
        lines += ([""] if lines else []) + arch_lines
        spills += arch_spills
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
