"""``qmprr bench``: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import argparse
from typing import Any

from .base import EXIT_OK, command, count, group

_EXITS = "0 measured (the figures are printed, never judged); 2 could not run (QEMU missing, no space)."


def cmd_bench_log(args: argparse.Namespace) -> int:
    from ..bench import log

    log.run(records=args.records, always_records=args.always_records, folder=args.dir)
    return EXIT_OK


def cmd_bench_proxy(args: argparse.Namespace) -> int:
    from ..bench import proxy

    proxy.run(commands=args.commands, rounds=args.rounds)
    return EXIT_OK


def cmd_bench_hotpath(args: argparse.Namespace) -> int:
    from ..bench import hotpath

    hotpath.run(commands=args.commands, rounds=args.rounds)
    return EXIT_OK


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from ..bench import replay

    replay.run(exchanges=args.exchanges, commands=args.commands, rounds=args.rounds, only=args.only)
    return EXIT_OK


def cmd_bench_analysis(args: argparse.Namespace) -> int:
    from ..bench import analysis

    analysis.run(records=args.records, folder=args.dir)
    return EXIT_OK


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    from ..bench import fleet

    fleet.run(recordings=args.recordings, records=args.records, folder=args.dir, baseline_src=args.baseline_src)
    return EXIT_OK


def _add_dir(b: Any, what: str = "files") -> None:
    b.add_argument("--dir", help=f"folder for the temporary {what} (default: the system's)")


def register(sub: Any) -> None:
    bench = group(sub, "bench", help="benchmarks that print ratios against a same-run baseline",
                  description="Benchmarks. Each measures its baseline in the same run, in interleaved "
                  "rounds, and prints ratios (machines are noisy: compare ratios, not times).",
                  dest="bench", metavar="BENCH")
    b = command(
        bench, "log",
        help="recording write and read+verify throughput",
        description="Write a synthetic recording under each sync policy, then read and verify "
        "it, against a plain orjson.loads loop over the same file; and the reader's peak memory.",
        examples=["qmprr bench log --records 300000 --dir /var/tmp"],
        exits=_EXITS, func=cmd_bench_log,
    )
    b.add_argument("--records", type=count, default=1_000_000, help="records to write (default 1,000,000)")
    b.add_argument("--always-records", type=count, default=2_000,
                   help="records to write with sync=always, one fsync each (default 2,000)")
    _add_dir(b)
    b = command(
        bench, "proxy",
        help="client round-trip cost of the recording proxy",
        description="Time query-status round trips four ways against one QEMU: a raw socket client "
        "and qemu.qmp's QMPClient, straight and through 'qmprr proxy'; print medians and ratios.",
        examples=["qmprr bench proxy --commands 2000 --rounds 10"],
        exits=_EXITS, func=cmd_bench_proxy,
    )
    b.add_argument("--commands", type=count, default=2000, help="round trips per way (default 2,000)")
    b.add_argument("--rounds", type=count, default=10, help="interleaved rounds (default 10)")
    b = command(
        bench, "hotpath",
        help="the proxy's Python per command, in process (fake transports, a real log)",
        description="Drive the serve loop, channel and writer with fake transports: time per command "
        "warm and after a 1 ms sleep (cold caches), bytecodes and Python calls per command, and the "
        "functions executing most of them (exact counts: compare versions of the code with them).",
        examples=["qmprr bench hotpath --commands 5000 --rounds 5"],
        exits=_EXITS, func=cmd_bench_hotpath,
    )
    b.add_argument("--commands", type=count, default=5000, help="commands per warm round (default 5,000)")
    b.add_argument("--rounds", type=count, default=5, help="interleaved rounds (default 5)")
    b = command(
        bench, "replay",
        help="fake QEMU throughput, and replay's cost against a real QEMU",
        description="(a) fake QEMU throughput with a pipelining raw client, against a real QEMU and a "
        "minimal responder; (b) replaying N commands against a real QEMU vs a raw client.",
        examples=["qmprr bench replay --only replay --commands 10000 --rounds 3"],
        exits=_EXITS, func=cmd_bench_replay,
    )
    b.add_argument("--exchanges", type=count, default=20_000, help="pipelined exchanges for (a)")
    b.add_argument("--commands", type=count, default=10_000, help="commands replayed for (b)")
    b.add_argument("--rounds", type=count, default=3)
    b.add_argument("--only", choices=("fake", "replay"))
    b = command(
        bench, "analysis",
        help="stats time and memory, show --json throughput against jq",
        description="Build a recording of --records records, then print from one run: stats wall "
        "time and peak memory (a child process), 'show --command ... --json' throughput, and the "
        "same selection counted with jq over the same file.",
        examples=["qmprr bench analysis --records 1000000"],
        exits=_EXITS, func=cmd_bench_analysis,
    )
    b.add_argument("--records", type=count, default=1_000_000, help="records to write (default 1,000,000)")
    _add_dir(b, "file")
    b = command(
        bench, "fleet",
        help="qmprr query over a synthetic fleet (JSONL and Parquet) against jq and per-file stats",
        description="Write a synthetic fleet, then time one question (per-command count, errors, "
        "p50/p99) with qmprr query over the JSONL, over its Parquet export, with a jq pipeline and "
        "(--baseline-src) an older qmprr's stats per file; print ratios, sizes, peak memory.",
        examples=["qmprr bench fleet --recordings 200 --records 1000000"],
        exits=_EXITS, func=cmd_bench_fleet,
    )
    b.add_argument("--recordings", type=count, default=200, help="recordings (default 200)")
    b.add_argument("--records", type=count, default=1_000_000, help="records in all (default 1,000,000)")
    b.add_argument("--baseline-src", metavar="DIR", help="an older qmprr source tree for the stats baseline")
    _add_dir(b)
