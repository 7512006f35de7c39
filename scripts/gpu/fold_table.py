"""The fold-gate section of a GPU check's summary: reads OUT/fold-tf32-{true,false}/**/fold.json
and prints a markdown table of the f64 verdict and each measured deviation.

Usage: python3 scripts/gpu/fold_table.py OUT
"""
import glob
import json
import os
import sys

out = sys.argv[1]
print("## Fold gate (`run.tf32`)\n")
print("The verdict is the f64 check; the measured rows are the trained model on the device against the same f64 reference (a measurement, never the gate).\n")
print("| run.tf32 | verdict (f64) | worst block rel | measured on | worst rel | first-order bound | within |")
print("|---|---|---|---|---|---|---|")
for tf32 in ("true", "false"):
    files = glob.glob(os.path.join(out, f"fold-tf32-{tf32}", "**", "fold.json"), recursive=True)
    if not files:
        print(f"| {tf32} | no fold.json (see logs/fold-gate-tf32-{tf32}.log) | | | | | |")
        continue
    r = json.load(open(files[0]))
    ex = r["exact"]
    ok = all(d["rel"] <= ex["block_tolerance"] for d in ex["blocks"]) and all(
        d["rel"] <= ex["output_tolerance"] for d in ex["outputs"])
    wb = max((d["rel"] for d in ex["blocks"]), default=0.0)
    for m in r.get("measured", []) or [{"precision": "-", "outputs": [], "bound": float("nan")}]:
        w = max((d["rel"] for d in m["outputs"]), default=float("nan"))
        print(f"| {tf32} | {'exact' if ok else '**NOT exact**'} | {wb:.2e} | {m['precision']} | {w:.2e} | {m['bound']:.2e} | {'yes' if w <= m['bound'] else '**no**'} |")
