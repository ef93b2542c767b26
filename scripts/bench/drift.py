#!/usr/bin/env python3
"""Writes the refresh benchmark's drifted copy of the 1M-entity input.

Adds 1.0 to `f0` of every 20th row (5 % of the entities), keeps every other
column as it is, and writes it as the source is written (pyarrow's
defaults with the source's row-group size and compression: one row group,
uncompressed, for the 1M-row input), so that the two files differ only in
the moved values. (The copy used to be written in row groups of 65,536
rows with Snappy, pyarrow's defaults, which made the refresh decode a
differently encoded and compressed file than the full run it is measured
against.)
Needs pyarrow.

    python3 scripts/bench/drift.py /tmp/tandem-bench/1m.parquet /tmp/tandem-bench/1m-drift.parquet
"""

import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def main():
    src, dst = sys.argv[1], sys.argv[2]
    source = pq.ParquetFile(src)
    compression = source.metadata.row_group(0).column(0).compression.lower()
    table = source.read()
    n = table.num_rows
    every_20th = pa.array([i % 20 == 0 for i in range(n)])
    f0 = table.column("f0")
    moved = pc.if_else(every_20th, pc.add(f0, pa.scalar(1.0, f0.type)), f0)
    table = table.set_column(table.schema.get_field_index("f0"), "f0", moved)
    rows_per_group = source.metadata.row_group(0).num_rows
    pq.write_table(table, dst, row_group_size=rows_per_group,
                   compression="none" if compression == "uncompressed" else compression)
    print(f"{dst}: {n} rows, {sum(1 for i in range(n) if i % 20 == 0)} moved")


if __name__ == "__main__":
    main()
