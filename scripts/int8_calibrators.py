#!/usr/bin/env python3
"""INT8 drop per calibrator on a finished classification grid (issue #23's evidence).

For every cell of RUNS (a directory of `overparam experiment` cells, each with
`model.deploy.safetensors` and `cell.json`), runs `overparam engine accuracy --json` in
TensorRT's encoding (int8 activations, zero point 0), evaluated in ONNX Runtime on the test
split, once per calibrator, and writes into --out:
  results.csv   one row per cell and seed: label, seed, fp32 top-1 err %, and one
                `int8 drop <name> %` column per calibrator (INT8 top-1 error minus FP32 top-1
                error of the same model, points); `qat` is `overparam qat --pair` (a
                --qat-epochs fine-tune with fake quantisation, its INT8 error minus that of an
                FP32 fine-tune of the same length; --qat-epochs 0 leaves it empty);
  qat.csv       per cell: QAT's errors before and after, how ONNX Runtime reproduces the QAT
                model (top-1 agreement, logits within 2 steps), the step-time ratio;
  calibration.csv  per cell and calibrator: the wall-clock seconds of the whole command, and
                for auto the rule it started from and the tensors it moved;
  summary.md    mean ± std per method and calibrator, and the goals checked.
Results are cached per model in `calibrators.json` beside it (keyed by the arguments and the
model's size and mtime), so a grid can be studied while it runs. Standard library only.

  scripts/int8_calibrators.py runs/fashion-mnist-int8 --data /usr/share/datasets/fashion-mnist \
      --calibrators entropy,max,mse,auto --out docs/results/fashion-mnist-int8
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cached(deploy, what, compute):
    """`compute()`'s result for `what` on the model `deploy`, cached in `calibrators.json`
    beside it (keyed by `what` and the model's size and mtime)."""
    key = f"{what} {deploy.stat().st_size} {deploy.stat().st_mtime_ns}"
    cache = deploy.parent / "calibrators.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    out = compute()
    known[key] = out
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(cache)
    return out


def run_json(cmd):
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return json.loads(p.stdout), seconds


def measure(binary, deploy, data, calibrator, calib_images, batch):
    def compute():
        cmd = [binary, "engine", "accuracy", str(deploy), "--data", str(data), "--json",
               "--encoding", "trt", "--calibrator", calibrator, "--calib-images",
               str(calib_images), "--batch", str(batch)]
        r, seconds = run_json(cmd)
        auto = r["calibration"].get("auto")
        return {
            "fp32": r["top1_err"]["fp32"],
            "int8": r["top1_err"]["int8"],
            "seconds": seconds,
            "auto_start": auto["start"] if auto else "",
            "auto_changed": auto["changed"] if auto else [],
            "auto_evaluations": auto["evaluations"] if auto else 0,
        }
    return cached(deploy, f"{calibrator} {calib_images} {batch} trt", compute)


def measure_qat(binary, cell, epochs, calib_images, batch):
    def compute():
        cmd = [binary, "qat", "--run", str(cell), "--epochs", str(epochs), "--pair", "--json",
               "--encoding", "trt", "--calib-images", str(calib_images), "--batch", str(batch)]
        r, seconds = run_json(cmd)
        return {
            "fp32": r["pair"]["onnx_top1_err"],
            "int8": r["qat"]["onnx_top1_err"],
            "seconds": seconds,
            "before_fp32": r["fp32_top1_err"],
            "before_int8": r["ptq_int8_top1_err"],
            "qat_model": r["qat"]["model_top1_err"],
            "agreement": r["reproduction"]["top1_agreement"],
            "within_2": r["reproduction"]["within_2_steps"],
            "max_steps": r["reproduction"]["max_steps"],
            "step_ratio": r["qat"]["step_seconds"] / r["pair"]["step_seconds"],
            "thresholds_moved": r["thresholds_moved"],
        }
    return cached(cell / "model.deploy.safetensors", f"qat {epochs} {calib_images} {batch} trt",
                  compute)


def mean_std(xs):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--calibrators", default="entropy,max,mse,auto")
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--binary", default="target/release/overparam")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    names = a.calibrators.split(",")
    cells = []
    for cj in sorted(a.runs.glob("*/cell.json")):
        cell = json.loads(cj.read_text())
        deploy = cj.parent / "model.deploy.safetensors"
        if not deploy.exists():
            continue
        label, seed = cell["label"], cell["seed"]
        per = {}
        for c in names:
            per[c] = measure(a.binary, deploy, a.data, c, a.calib_images, a.batch)
            print(f"{label}-s{seed} {c}: int8 drop {per[c]['int8'] - per[c]['fp32']:+.2f} "
                  f"({per[c]['seconds']:.1f} s)", file=sys.stderr)
        if a.qat_epochs > 0:
            per["qat"] = measure_qat(a.binary, cj.parent, a.qat_epochs, a.calib_images, a.batch)
            q = per["qat"]
            print(f"{label}-s{seed} qat: int8 drop {q['int8'] - q['fp32']:+.2f} "
                  f"(agreement {100 * q['agreement']:.2f}%, {q['seconds']:.1f} s)", file=sys.stderr)
        cells.append((label, seed, per))
    if not cells:
        sys.exit(f"{a.runs}: no finished cells (*/cell.json with model.deploy.safetensors)")
    order = list(dict.fromkeys(c[0] for c in cells))
    cells.sort(key=lambda c: (order.index(c[0]), c[1]))
    a.out.mkdir(parents=True, exist_ok=True)
    cols = names + (["qat"] if "qat" not in names else [])
    with open(a.out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "seed", "fp32 top-1 err %"] + [f"int8 drop {c} %" for c in cols])
        for label, seed, per in cells:
            fp32 = per[names[0]]["fp32"]
            w.writerow([label, seed, f"{fp32:.2f}"] +
                       [f"{per[c]['int8'] - per[c]['fp32']:.2f}" if c in per else "" for c in cols])
    with open(a.out / "calibration.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "seed", "calibrator", "seconds", "auto start", "auto evaluations",
                    "auto tensors moved"])
        for label, seed, per in cells:
            for c in names:
                m = per[c]
                w.writerow([label, seed, c, f"{m['seconds']:.1f}", m["auto_start"],
                            m["auto_evaluations"] or "", " ".join(m["auto_changed"])])
    drop = lambda per, c: per[c]["int8"] - per[c]["fp32"]
    md = ["# INT8 drop per calibrator", "",
          f"{len(cells)} cells of `{a.runs}`; TensorRT's encoding (int8 activations, zero point 0) "
          f"evaluated in ONNX Runtime (CPU) on the test split; calibration on {a.calib_images} "
          f"seeded train images at batch {a.batch}; auto chooses on the next 256 train images. "
          "Drop = INT8 top-1 error − FP32 top-1 error of the same model, points (mean ± std over seeds).",
          "", "| method | fp32 top-1 err % | " + " | ".join(f"drop {c}" for c in names) + " |",
          "|---|---|" + "---|" * len(names)]
    for label in order:
        g = [per for l, _, per in cells if l == label]
        md.append(f"| {label} | {mean_std([p[names[0]]['fp32'] for p in g])} | " +
                  " | ".join(mean_std([drop(p, c) for p in g]) for c in names) + " |")
    allc = [per for _, _, per in cells]
    md.append("| **all** | | " + " | ".join(mean_std([drop(p, c) for p in allc]) for c in names) + " |")
    if "auto" in names:
        singles = [c for c in names if c != "auto"]
        # Errors move in steps of one test image (0.01 points on 10,000): compare rounded.
        gap = [round(drop(p, "auto") - min(drop(p, c) for c in singles), 6) for p in allc]
        worst = max(drop(p, "auto") for p in allc)
        md += ["", "## Goals", "",
               f"- auto's mean drop: {statistics.mean(drop(p, 'auto') for p in allc):+.3f} points (goal ≤ 0.1).",
               f"- auto's worst cell: {worst:+.2f} points (goal ≤ 0.3).",
               f"- auto minus the best single calibrator of the cell ({', '.join(singles)}): "
               f"mean {statistics.mean(gap):+.3f}, worst {max(gap):+.2f} points (goal ≤ 0.05 in every cell); "
               f"{sum(round(g, 6) > 0.05 for g in gap)} of {len(gap)} cells over.",
               ]
        if "entropy" in names:
            md.append(f"- calibration + evaluation time, auto / entropy: "
                      f"{statistics.mean(p['auto']['seconds'] for p in allc) / statistics.mean(p['entropy']['seconds'] for p in allc):.2f}× "
                      "(wall clock of the whole `engine accuracy` command on a shared machine; "
                      "`cargo bench --bench calibration` times calibration alone).")
    qc = [(l, sd, per["qat"], per) for l, sd, per in cells if "qat" in per]
    if qc:
        with open(a.out / "qat.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "seed", "fp32 top-1 err %", "ptq int8 (auto) %", "qat model %",
                        "qat int8 %", "fp32 fine-tune %", "int8 drop qat %", "top-1 agreement %",
                        "logits within 2 steps %", "max steps", "qat step / fp32 step",
                        "thresholds moved", "seconds"])
            for l, sd, q, _ in qc:
                w.writerow([l, sd, f"{q['before_fp32']:.2f}", f"{q['before_int8']:.2f}",
                            f"{q['qat_model']:.2f}", f"{q['int8']:.2f}", f"{q['fp32']:.2f}",
                            f"{q['int8'] - q['fp32']:.2f}", f"{100 * q['agreement']:.2f}",
                            f"{100 * q['within_2']:.2f}", f"{q['max_steps']:.2f}",
                            f"{q['step_ratio']:.2f}", q["thresholds_moved"], f"{q['seconds']:.0f}"])
        qd = [q["int8"] - q["fp32"] for _, _, q, _ in qc]
        plain = [q["before_fp32"] for l, _, q, _ in qc if l == "plain"]
        md += ["", "## QAT", "",
               f"`overparam qat --epochs {a.qat_epochs} --pair`: a fine-tune of each trained "
               "checkpoint with fake quantisation through the fold, exported INT8 with the learned "
               "thresholds; its pair is an FP32 fine-tune of the same length through the same "
               "folded forward. Drop = QAT INT8 error − the pair's FP32 error.", "",
               "| method | drop qat | qat int8 err % | fp32 fine-tune err % | top-1 agreement % (min) | qat step / fp32 step |",
               "|---|---|---|---|---|---|"]
        for label in order:
            g = [q for l, _, q, _ in qc if l == label]
            if g:
                md.append(f"| {label} | {mean_std([q['int8'] - q['fp32'] for q in g])} | "
                          f"{mean_std([q['int8'] for q in g])} | {mean_std([q['fp32'] for q in g])} | "
                          f"{min(100 * q['agreement'] for q in g):.2f} | "
                          f"{statistics.mean(q['step_ratio'] for q in g):.2f}× |")
        md += ["", f"- QAT's mean drop: {statistics.mean(qd):+.3f} points (goal ≤ 0.05); "
               f"worst cell {max(qd):+.2f}."]
        if plain:
            base = statistics.mean(plain)
            md.append(f"- QAT INT8 error per method against plain's FP32 error ({base:.2f}%, "
                      "before fine-tuning; goal: no higher): " + ", ".join(
                          f"{label} {statistics.mean(q['int8'] for l, _, q, _ in qc if l == label):.2f}"
                          for label in order if any(l == label for l, _, _, _ in qc)) + ".")
        agree = [q["agreement"] for _, _, q, _ in qc]
        md.append(f"- ONNX Runtime reproduces the QAT model: top-1 agreement mean "
                  f"{100 * statistics.mean(agree):.2f}%, min {100 * min(agree):.2f}% (goal ≥ 99.9%); "
                  f"logits within 2 steps (max|logit|/127): min {100 * min(q['within_2'] for _, _, q, _ in qc):.2f}%, "
                  f"largest difference {max(q['max_steps'] for _, _, q, _ in qc):.2f} steps.")
    (a.out / "summary.md").write_text("\n".join(md) + "\n")
    print(f"wrote {a.out}/results.csv, calibration.csv, summary.md", file=sys.stderr)


if __name__ == "__main__":
    main()
