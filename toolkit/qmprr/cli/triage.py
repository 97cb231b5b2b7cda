"""``qmprr minimize``: a failing recording shrunk to a smallest one that still fails the same way."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .base import UsageError, command, count, run_async
from .options import add_replay, replay_options


def cmd_minimize(args: argparse.Namespace) -> int:
    from ..replay.minimize import Criterion, Settings, parse_budget, run_minimize
    from ..replay.run import RunOptions

    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = Settings(
        run=RunOptions(target=args.target, qemu=args.qemu),
        replay=replay_options(args),
        criterion=Criterion(error_class=args.error_class, event=args.event, predicate=args.predicate),
        jobs=args.jobs or os.cpu_count() or 1, budget=budget, argv=args.argv, progress=sys.stderr.isatty(),
    )
    return run_async(run_minimize(args.file, args.output, settings))


def register(sub: Any) -> None:
    p = command(
        sub, "minimize",
        help="shrink a failing recording to a smallest one that still fails the same way",
        description="Delta debugging (ddmin) over FILE's commands: each try replays a candidate as "
        "'qmprr replay' does (--target qemu: a fresh sandboxed QEMU from the recorded argv), up to --jobs "
        "at once. Dependencies are kept together: qmp_capabilities, a blockdev-add/device_add/object-add "
        "with every command naming its node or id, a job's start with its job-* commands, a transaction "
        "whole. 'Still fails' is the original's first divergence (command and differences) unless "
        "--error-class, --event or --predicate say otherwise (all given must hold). Every try is "
        "sandboxed and checked as replay is, and takes replay's --rules, --map-path, --secret and "
        "--host-differences; --allow-unsafe turns the sandbox and the checks off. FILE may be "
        "compressed (.jsonl.zst) or a segment set, read whole in order. OUT is one normal .jsonl "
        "recording whose header's derived_from names FILE's final hash (a set's: its last segment's) "
        "and how it was reduced.",
        examples=["qmprr minimize bug.jsonl -o small.jsonl --target qemu --budget 200 --argv",
                  "qmprr minimize recordings/vm/ -o small.jsonl --map-path /var/lib/images=$PWD/images"
                  "   # a segment set",
                  "qmprr minimize bug.jsonl -o small.jsonl --error-class DeviceNotActive --budget 5m",
                  "qmprr minimize bug.jsonl -o small.jsonl --predicate 'jq -e \".reproduced == false\"'"],
        exits="0 minimized (OUT written), 1 the original does not fail, 2 could not run.",
        func=cmd_minimize,
    )
    p.add_argument("file", help="recording to minimize: a .jsonl, a .jsonl.zst, or a segment set (its folder or"
                   " first segment), read whole")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="minimized recording, one .jsonl (must not exist)")
    add_replay(p)
    p.add_argument("--error-class", metavar="NAME", help="still failing: some reply is an error of class NAME")
    p.add_argument("--event", metavar="NAME", help="still failing: QEMU still sends event NAME")
    p.add_argument("--predicate", metavar="CMD",
                   help="still failing: CMD, given the replay report as JSON on stdin, exits 0")
    p.add_argument("--jobs", type=count, metavar="N", help="tries at once (default: the number of cores)")
    p.add_argument("--budget", default="1000", metavar="N|TIME",
                   help="stop after N tries or TIME (60s, 5m) with the best so far (default 1000 tries)")
    p.add_argument("--argv", action="store_true", help="also drop QEMU options not needed to reproduce")
