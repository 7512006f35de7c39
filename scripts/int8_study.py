#!/usr/bin/env python3
"""INT8 on a finished classification grid, beyond the grid's own numbers.

The grid (`overparam experiment`) measures each cell's INT8 drop in TensorRT's encoding (int8
activations, zero point 0). This adds, through `overparam engine accuracy` on the same data:
  - the drop in the CPU encoding (uint8, zero point 128, conv outputs quantised too), per cell;
  - for the labels given with --sensitivity, the per-layer sensitivity scan in TensorRT's
    encoding and the partial-INT8 model found within --budget points.
Writes int8_encodings.csv and int8_study.md into --out. Standard library only.

  scripts/int8_study.py runs/fashion-mnist --data /usr/share/datasets/fashion-mnist \
      --sensitivity plain,repvgg --out docs/results/fashion-mnist
"""

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^\s+(fp32|fp16|int8)\s+([0-9.]+)%\s+([+-][0-9.]+)\s*$")
LAYER = re.compile(r"^\s+(\S+)\s+([+-][0-9.]+) points$")
PARTIAL = re.compile(
    r"^partial INT8 within ([0-9.]+) points: top-1 err ([0-9.]+)% \(([+-][0-9.]+)\) with (\d+) layer\(s\) kept in (\w+): (.*)$"
)


def accuracy(binary, deploy, data, encoding, calib_images, sensitivity, budget,
             calibrator="entropy"):
    """`engine accuracy` on one deploy model, parsed; cached beside the model (keyed by the
    arguments and the model's size and mtime), so a growing grid can be studied as it runs."""
    key = (f"{encoding} {calib_images} {sensitivity} {budget} {calibrator} "
           f"{deploy.stat().st_size} {deploy.stat().st_mtime_ns}")
    cache = deploy.parent / "int8_study.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    out = run_accuracy(binary, deploy, data, encoding, calib_images, sensitivity, budget,
                       calibrator)
    known[key] = out
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(cache)
    return out


def run_accuracy(binary, deploy, data, encoding, calib_images, sensitivity, budget, calibrator):
    cmd = [binary, "engine", "accuracy", str(deploy), "--data", str(data),
           "--encoding", encoding, "--calib-images", str(calib_images),
           "--calibrator", calibrator]
    if sensitivity:
        cmd += ["--sensitivity", "--budget", str(budget)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    out = {"layers": [], "partial": None}
    scan = False
    for line in p.stdout.splitlines():
        if m := ROW.match(line):
            out[m[1]] = float(m[2])
        elif line.startswith("INT8 sensitivity"):
            scan = True
        elif scan and (m := LAYER.match(line)):
            out["layers"].append((m[1], float(m[2])))
        elif m := PARTIAL.match(line):
            scan = False
            out["partial"] = {"err": float(m[2]), "drop": float(m[3]), "kept": int(m[4]),
                              "precision": m[5], "layers": m[6]}
    for k in ("fp32", "int8"):
        if k not in out:
            sys.exit(f"{deploy}: no {k} row in the output of {' '.join(cmd)}:\n{p.stdout}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exp_dir", type=Path, help="the experiment directory (runs/<name>)")
    ap.add_argument("--data", type=Path, required=True, help="the dataset directory")
    ap.add_argument("--out", type=Path, required=True, help="where the CSV and markdown go")
    ap.add_argument("--sensitivity", default="", help="labels to scan, comma-separated")
    ap.add_argument("--seeds", default="0", help="seeds to scan (comma-separated)")
    ap.add_argument("--budget", type=float, default=0.5, help="partial-INT8 budget, points")
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--calibrators", default="",
                    help="other calibrators to measure in TensorRT's encoding (e.g. max,mse)")
    ap.add_argument("--bin", default="target/release/overparam")
    a = ap.parse_args()
    cells = sorted((json.loads(p.read_text()) | {"dir": p.parent}
                    for p in a.exp_dir.glob("*/cell.json")), key=lambda c: c["dir"].name)
    if not cells:
        sys.exit(f"{a.exp_dir}: no finished cells (*/cell.json)")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    calibrators = [c for c in a.calibrators.split(",") if c]
    for i, c in enumerate(cells):
        print(f"[{i + 1}/{len(cells)}] {c['dir'].name}: cpu encoding", file=sys.stderr)
        r = accuracy(a.bin, c["dir"] / "model.deploy.safetensors", a.data, "cpu",
                     a.calib_images, False, a.budget)
        row = {"label": c["label"], "seed": c["seed"], "fp32 top-1 err %": r["fp32"],
               "int8 trt drop": c["int8_drop"]["top-1 err %"],
               "int8 cpu drop": r["int8"] - r["fp32"]}
        for cal in calibrators:
            print(f"[{i + 1}/{len(cells)}] {c['dir'].name}: {cal} calibrator", file=sys.stderr)
            q = accuracy(a.bin, c["dir"] / "model.deploy.safetensors", a.data, "trt",
                         a.calib_images, False, a.budget, cal)
            row[f"int8 trt drop ({cal})"] = q["int8"] - q["fp32"]
        rows.append(row)
    with open(a.out / "int8_encodings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})
    md = ["# INT8 on real data: both encodings, sensitivity and partial INT8", "",
          f"Top-1 error drop (points) of the INT8 model against FP32, both through ONNX Runtime "
          f"(CPU) on the test split; entropy calibration on {a.calib_images} seeded training "
          "images; mean ± std over seeds. `trt`: TensorRT's encoding (the grid's own number), "
          "`cpu`: the CPU encoding. Per cell: [int8_encodings.csv](int8_encodings.csv).", "",
          "| method | seeds | int8 trt drop | int8 cpu drop |"
          + "".join(f" int8 trt drop, {c} calibrator |" for c in calibrators),
          "|---|---|---|---|" + "---|" * len(calibrators)]
    # Rows in the grid's order (experiment.json), as `experiment summarize` writes them.
    grid = json.loads((a.exp_dir / "experiment.json").read_text())
    done = {r["label"] for r in rows}
    order = [x["label"] for x in grid["cells"] if x["label"] in done]

    def ms(xs):
        m = sum(xs) / len(xs)
        s = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
        return f"{m:+.2f} ± {s:.2f}"
    for l in order:
        rs = [r for r in rows if r["label"] == l]
        md.append(f"| {l} | {len(rs)} | {ms([r['int8 trt drop'] for r in rs])} | "
                  f"{ms([r['int8 cpu drop'] for r in rs])} |"
                  + "".join(f" {ms([r[f'int8 trt drop ({c})'] for r in rs])} |"
                            for c in calibrators))
    labels = [l for l in a.sensitivity.split(",") if l]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    if labels:
        md += ["", f"## Sensitivity and partial INT8 (TensorRT's encoding, budget {a.budget} points)",
               "", "Each layer quantised alone (the rest FP32): its top-1 drop, worst first; then "
               "the partial-INT8 model `engine accuracy --sensitivity` finds by keeping the most "
               "sensitive layers out of INT8 (in FP16, as TensorRT would run them) until the drop "
               "is within the budget.", ""]
    for l in labels:
        for s in seeds:
            c = next((c for c in cells if c["label"] == l and c["seed"] == s), None)
            if c is None:
                sys.exit(f"--sensitivity {l}: no finished cell with seed {s}")
            print(f"sensitivity: {c['dir'].name}", file=sys.stderr)
            r = accuracy(a.bin, c["dir"] / "model.deploy.safetensors", a.data, "trt",
                         a.calib_images, True, a.budget)
            p = r["partial"]
            md += [f"### {l}, seed {s}", "",
                   f"FP32 {r['fp32']:.2f}%, full INT8 {r['int8']:.2f}% "
                   f"({r['int8'] - r['fp32']:+.2f}). Most sensitive layers: "
                   + ", ".join(f"`{n}` {d:+.2f}" for n, d in r["layers"][:4]) + ".", ""]
            if p:
                md += [f"Partial INT8: {p['err']:.2f}% ({p['drop']:+.2f}) with {p['kept']} "
                       f"layer(s) kept in {p['precision']}: {p['layers']}.", ""]
    (a.out / "int8_study.md").write_text("\n".join(md) + "\n")
    print(f"wrote {a.out / 'int8_encodings.csv'} and {a.out / 'int8_study.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
