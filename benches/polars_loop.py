"""The baseline `backfill` must beat: a hand-written Python loop of polars + delta-rs.

Runs the same slices as `benches/throughput.rs` over the same generated bucket, one
day at a time: read the day's Parquet with polars, transform, and replace the day's
partition with delta-rs (`write_deltalake(..., mode="overwrite", predicate=...)`).

    python benches/polars_loop.py target/bench-buckets/orders-8x1000000 8

Like the Rust benchmark, each case runs five times into a fresh table and the median
run is reported.

Needs `pip install polars deltalake pyarrow`.
"""

import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from deltalake import write_deltalake


def row_level(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "order_id", "customer_id", "amount", pl.col("status").str.to_uppercase(), "ordered_at", "dt"
    )


def aggregating(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.group_by("dt", "customer_id").agg(
        pl.len().alias("orders"),
        pl.col("amount").sum().alias("revenue"),
        pl.col("ordered_at").max().alias("last_order"),
    )


def run(bucket: Path, days: int, transform) -> float:
    first = datetime.date(2024, 1, 1)
    with tempfile.TemporaryDirectory() as destination:
        table = str(Path(destination) / "table")
        started = time.perf_counter()
        for offset in range(days):
            day = (first + datetime.timedelta(days=offset)).isoformat()
            frame = pl.read_parquet(bucket / "orders" / f"dt={day}" / "*.parquet").with_columns(dt=pl.lit(day))
            write_deltalake(
                table,
                transform(frame).to_arrow(),
                mode="overwrite",
                partition_by=["dt"],
                predicate=f"dt = '{day}'",
            )
        return time.perf_counter() - started


def main() -> None:
    bucket, days = Path(sys.argv[1]), int(sys.argv[2])
    rows = days * int(bucket.name.split("x")[1])
    size = sum(f.stat().st_size for f in (bucket / "orders").rglob("*.parquet")) / 1e6
    print(f"{'case':<14} {'slices':>7} {'rows/s':>12} {'MB/s':>10} {'s total':>9} {'ms/slice':>12}")
    for case, transform in [("row-level", row_level), ("aggregating", aggregating)]:
        seconds = statistics.median(run(bucket, days, transform) for _ in range(5))
        print(f"{case:<14} {days:>7} {rows / seconds:>12.0f} {size / seconds:>10.1f} {seconds:>9.2f} {seconds * 1000 / days:>12.1f}")


if __name__ == "__main__":
    main()
