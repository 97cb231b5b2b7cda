"""Run one triage question on Spark (local mode) over an exported dataset and compare with DuckDB.

    python examples/spark_check.py DATASET_DIR     (run by 'make spark-check')

Needs pyspark and a Java runtime; the answer must equal 'qmprr query --dataset'.
"""

from __future__ import annotations

import sys

QUESTION = ("SELECT command, count(*) AS n, sum(CASE WHEN result = 'error' THEN 1 ELSE 0 END) AS errors "
            "FROM commands GROUP BY command ORDER BY command")


def spark_answer(folder: str) -> list[tuple]:
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("qmprr-spark-check")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        spark.read.option("basePath", f"{folder}/commands").parquet(f"{folder}/commands") \
            .createOrReplaceTempView("commands")
        return [tuple(r) for r in spark.sql(QUESTION).collect()]
    finally:
        spark.stop()


def duckdb_answer(folder: str) -> list[tuple]:
    from qmprr.analysis.query.engine import open_dataset

    return [tuple(r) for r in open_dataset(folder).con.execute(QUESTION).fetchall()]


def main() -> int:
    folder = sys.argv[1]
    duck, spark = duckdb_answer(folder), spark_answer(folder)
    print(f"duckdb: {duck}\nspark:  {spark}")
    if duck != spark:
        print("qmprr: Spark and DuckDB disagree", file=sys.stderr)
        return 1
    print(f"spark-check: {len(duck)} rows identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
