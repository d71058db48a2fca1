"""The baseline `backfill` must beat: a hand-written Python loop of polars + delta-rs.

Runs the same slices as `benches/throughput.rs`, over the same generated bucket, one
slice at a time: read the slice's Parquet with polars, transform, and replace the
slice's partition with delta-rs (`write_deltalake(..., mode="overwrite", predicate=...)`),
or, for `merge`, merge it on `order_id` and the day (`DeltaTable.merge(...)
.when_matched_update_all().when_not_matched_insert_all()`) into a fresh table and then
again over it, next to the same two loops with overwrite.

    python benches/polars_loop.py rows     target/bench-buckets/orders-8x1000000
    python benches/polars_loop.py distinct target/bench-buckets/orders-8x1000000
    python benches/polars_loop.py merge    target/bench-buckets/orders-60x900
    python benches/polars_loop.py hourly   target/bench-buckets/events-84x24x40 [hours]

Run the Rust case first: it generates the bucket. Like it, each case runs five times
(`--repeat N` to change) into a fresh table and reports the median run's wall and CPU
time, the time per slice over the first and last tenth of its slices, the process's
peak memory and the size of the table written.

Needs `pip install polars deltalake pyarrow`.
"""

import datetime
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake


def rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "order_id", "customer_id", "amount", pl.col("status").str.to_uppercase(), "ordered_at", "dt"
    )


def distinct(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.group_by("dt", "status").agg(
        pl.len().alias("orders"),
        pl.col("customer_id").n_unique().alias("customers"),
        pl.col("amount").sum().alias("revenue"),
        pl.col("amount").mean().alias("average_amount"),
    )


def hourly(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.group_by("dt", "hr", "customer_id").agg(
        pl.len().alias("events"),
        (pl.col("kind") == "click").cast(pl.Int64).sum().alias("clicks"),
    )


def daily_slices(bucket: Path):
    days = sorted(p.name.removeprefix("dt=") for p in (bucket / "orders").glob("dt=*"))
    for day in days:
        yield bucket / "orders" / f"dt={day}", {"dt": day}, ["dt"]


def hourly_slices(bucket: Path, hours: int):
    first = datetime.datetime(2024, 1, 1)
    for offset in range(hours):
        at = first + datetime.timedelta(hours=offset)
        day, hour = at.date().isoformat(), f"{at.hour:02}"
        yield bucket / "events" / f"dt={day}" / f"hr={hour}", {"dt": day, "hr": hour}, ["dt", "hr"]


def overwrite(table: str, output, partition: dict, partition_by: list) -> None:
    predicate = " AND ".join(f"{column} = '{value}'" for column, value in partition.items())
    write_deltalake(table, output, mode="overwrite", partition_by=partition_by, predicate=predicate)


def merge(table: str, output, partition: dict, partition_by: list) -> None:
    if not Path(table, "_delta_log").exists():
        write_deltalake(table, output, partition_by=partition_by)
        return
    matched = " AND ".join(f"t.{c} = s.{c}" for c in ["order_id", *partition_by])
    (
        DeltaTable(table)
        .merge(output, predicate=matched, source_alias="s", target_alias="t")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def loop(table: str, slices, transform, write):
    """One loop over the slices into `table`: wall time, CPU time, finish times, and the
    size of the table it wrote."""
    started, cpu = time.perf_counter(), time.process_time()
    finished = []
    for folder, partition, partition_by in slices:
        frame = pl.read_parquet(folder / "*.parquet").with_columns(
            **{column: pl.lit(value) for column, value in partition.items()}
        )
        write(table, transform(frame).to_arrow(), partition, partition_by)
        finished.append(time.perf_counter() - started)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    table_bytes = sum(f.stat().st_size for f in Path(table).rglob("*") if f.is_file())
    return wall, cpu, finished, table_bytes


def run(slices, transform, write=overwrite, again=False):
    """One loop over the slices into a fresh table, and with `again` a second loop over
    the same table: the figures of each."""
    with tempfile.TemporaryDirectory() as destination:
        table = str(Path(destination) / "table")
        first = loop(table, slices(), transform, write)
        return (first, loop(table, slices(), transform, write)) if again else (first,)


def report(case: str, runs) -> None:
    runs = sorted(runs, key=lambda r: r[0])
    wall, cpu, finished, table_bytes = runs[len(runs) // 2]
    n = len(finished)
    tenth = max(n // 10, 1)
    first = finished[tenth - 1] * 1000 / tenth
    last = (finished[-1] - finished[-tenth - 1]) * 1000 / tenth if n > tenth else first
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
    print(f"{case:<15} {n:>7} {wall:>9.2f} {cpu:>9.2f} {wall * 1000 / n:>10.1f} {first:>12.1f} {last:>12.1f} {peak:>9.0f} {table_bytes / 1e6:>9.1f}")


def main() -> None:
    case, bucket = sys.argv[1], Path(sys.argv[2])
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    if case == "hourly":
        hours = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].isdigit() else 2016
        slices, transform = lambda: hourly_slices(bucket, hours), hourly
    else:
        slices = lambda: daily_slices(bucket)
        transform = {"rows": rows, "distinct": distinct, "merge": rows}[case]
    print(f"{'case':<15} {'slices':>7} {'wall s':>9} {'cpu s':>9} {'ms/slice':>10} {'first 10%':>12} {'last 10%':>12} {'peak MB':>9} {'table MB':>9}")
    if case != "merge":
        report(case, [run(slices, transform)[0] for _ in range(repeat)])
        return
    # Taking turns, as the Rust case does: a fresh table, then again over it.
    turns = [(run(slices, transform, merge, True), run(slices, transform, overwrite, True)) for _ in range(repeat)]
    report("merge", [m[0] for m, _ in turns])
    report("merge again", [m[1] for m, _ in turns])
    report("overwrite", [o[0] for _, o in turns])
    report("overwrite again", [o[1] for _, o in turns])


if __name__ == "__main__":
    main()
