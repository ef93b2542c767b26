#!/usr/bin/env python3
"""Summarise a Ballista executor log (TANDEM_LOG=ballista_executor=info):
per job and stage, the tasks (one per partition), their total time, the
stage's wall span and the most tasks running at once.

Usage: tasks.py LOG [FIRST_LINE [LABEL]]: only lines from FIRST_LINE
(1-based), rows labelled LABEL, no header when a label is given."""
import re
import sys
from collections import defaultdict
from datetime import datetime

pat = re.compile(r"^(\S+)\s+INFO .*(Execute|Finished) task\s*: \[TID (\S+)/(\d+)\.\d+/(\d+)\.\d+\]")
first = int(sys.argv[2]) if len(sys.argv) > 2 else 1
label = sys.argv[3] if len(sys.argv) > 3 else None
start, end = {}, {}
for n, line in enumerate(open(sys.argv[1]), 1):
    if n < first:
        continue
    m = pat.match(line)
    if not m:
        continue
    t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    key = (m.group(3), int(m.group(4)), int(m.group(5)))
    (start if m.group(2) == "Execute" else end)[key] = t

stages = defaultdict(list)
for key, s in start.items():
    if key in end:
        stages[key[:2]].append((s, end[key]))
if label is None:
    print("| job | stage | tasks (partitions) | task time | wall | most at once |")
    print("|---|---:|---:|---:|---:|---:|")
for (job, stage), spans in sorted(stages.items(), key=lambda kv: min(s for s, _ in kv[1])):
    busy = sum(e - s for s, e in spans)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    name = f"{label}, job {job[-6:]}" if label else job[-6:]
    print(f"| {name} | {stage} | {len(spans)} | {busy:.2f} s | {wall:.2f} s | {peak} |")
