#!/usr/bin/env python3
"""Writes the refresh benchmark's drifted copy of the 1M-entity input.

Adds 1.0 to `f0` of every 20th row (5 % of the entities), keeps every other
column as it is, and writes row groups of 65,536 rows (16 for 1M rows).
Needs pyarrow.

    python3 scripts/bench/drift.py /tmp/tandem-bench/1m.parquet /tmp/tandem-bench/1m-drift.parquet
"""

import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def main():
    src, dst = sys.argv[1], sys.argv[2]
    table = pq.read_table(src)
    n = table.num_rows
    every_20th = pa.array([i % 20 == 0 for i in range(n)])
    f0 = table.column("f0")
    moved = pc.if_else(every_20th, pc.add(f0, pa.scalar(1.0, f0.type)), f0)
    table = table.set_column(table.schema.get_field_index("f0"), "f0", moved)
    pq.write_table(table, dst, row_group_size=65536)
    print(f"{dst}: {n} rows, {sum(1 for i in range(n) if i % 20 == 0)} moved")


if __name__ == "__main__":
    main()
