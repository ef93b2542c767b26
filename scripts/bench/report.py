#!/usr/bin/env python3
"""Markdown table of tandem vs onnxruntime single-thread rows/s.

Reads criterion's estimates (cargo bench -p tandem-model --bench models) and
fixtures/bench/onnxruntime.json (make_models.py --bench-only), both measured
on the same machine. Standard library only.

    python3 scripts/bench/report.py --criterion "$CARGO_TARGET_DIR/criterion"
"""

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--criterion", default=str(ROOT / "target" / "criterion"))
    p.add_argument("--ort", default=str(ROOT / "fixtures" / "bench" / "onnxruntime.json"))
    args = p.parse_args()
    ort = json.loads(Path(args.ort).read_text())
    crit = Path(args.criterion)
    print(f"| model | batch | tandem rows/s | onnxruntime {ort['onnxruntime']} rows/s | ratio | tandem µs/call |")
    print("|---|---:|---:|---:|---:|---:|")
    for model, per in sorted(ort["models"].items()):
        for batch in ("1", "64", "8192"):
            est = crit / model / batch / "new" / "estimates.json"
            if not est.exists():
                continue
            ns = json.loads(est.read_text())["mean"]["point_estimate"]
            ours = int(batch) / (ns / 1e9)
            theirs = per[batch]["rows_per_s"]
            print(f"| {model} | {batch} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x | {ns / 1e3:,.1f} |")


if __name__ == "__main__":
    main()
