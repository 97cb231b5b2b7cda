"""``python -m qmprr.bench.minimize``: how small ``qmprr minimize`` gets a long session, in how many tries.

A session is recorded the way users record one (``qmprr launch`` with a real
``qemu-system-x86_64 -machine none``, a QMP client on its socket): NOISE
unrelated commands (queries, QOM reads, null-co nodes added and deleted
again), and buried among them the steps of one bug: two null-co nodes, a
mirror job between them (rate-limited, so it stays running), and a
``blockdev-del`` of the job's target node. QEMU refuses that delete (the node
is busy); the injected bug is the recorded reply edited to success, as if the
reporter's QEMU had allowed it, so a replay against this QEMU diverges there.
The known minimal recording is the negotiation plus those four steps (5
commands). ``qmprr minimize --target qemu`` then runs with a try budget and
the size reached and tries taken are printed, against the goal (at most 2x
the minimal size in at most 200 tries).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ..client import QmpClient
from ..recording.rechain import read_edited, write_derived

QEMU_NONE = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
#: The steps of the bug, in order (the last one's reply is the one edited).
BUG_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("blockdev-add", {"driver": "null-co", "node-name": "src0", "size": 67108864}),
    ("blockdev-add", {"driver": "null-co", "node-name": "dst0", "size": 67108864}),
    ("blockdev-mirror", {"job-id": "mirror0", "device": "src0", "target": "dst0", "sync": "full", "speed": 1}),
    ("blockdev-del", {"node-name": "dst0"}),
]
#: The minimal recording: qmprr's own negotiation and the bug's steps.
KNOWN_MINIMAL = 1 + len(BUG_STEPS)
GOAL_RATIO, GOAL_TRIES = 2.0, 200
NOISE: list[tuple[str, dict[str, Any] | None]] = [
    ("query-status", None),
    ("query-name", None),
    ("query-version", None),
    ("query-uuid", None),
    ("qom-get", {"path": "/machine", "property": "type"}),
    ("qom-list", {"path": "/machine"}),
]


def record_session(
    folder: str,
    noise: int = 500,
    seed: int = 0,
    qemu_argv: list[str] | None = None,
    steps: list[tuple[str, dict[str, Any]]] = BUG_STEPS,
) -> str:
    """Record the session (see the module docstring) into *folder*; return the edited recording's path.

    *steps* are the bug's (the last one's error reply is edited to success).
    """
    raw = record_raw(folder, noise, seed, qemu_argv, steps)
    edited = os.path.join(folder, "bug.jsonl")
    inject_bug(raw, edited, steps[-1])
    return edited


def record_raw(
    folder: str,
    noise: int = 500,
    seed: int = 0,
    qemu_argv: list[str] | None = None,
    steps: list[tuple[str, dict[str, Any]]] = BUG_STEPS,
    launch: Sequence[str] = (),
) -> str:
    """The session as recorded, not edited: ``folder/session.jsonl`` (*launch*: more ``qmprr launch`` options)."""
    rng = random.Random(seed)
    raw = os.path.join(folder, "session.jsonl")
    sock = os.path.join(folder, "qmp.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmprr.cli", "launch", "--record", raw, "--socket", sock, *launch, "--",
         *(qemu_argv or QEMU_NONE)],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qmprr launch did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.02)
        # where the bug's steps go among the noise, in order, spread over the session
        at = sorted(rng.sample(range(noise), len(steps)))
        with QmpClient(sock) as client:
            extra = 0
            for i in range(noise):
                if at and i == at[0]:
                    at.pop(0)
                    command, arguments = steps[len(steps) - len(at) - 1]
                    client.execute(command, arguments)
                if rng.random() < 0.04:  # an unrelated node, added and deleted again
                    name = f"noise{extra}"
                    extra += 1
                    client.execute("blockdev-add", {"driver": "null-co", "node-name": name})
                    client.execute("blockdev-del", {"node-name": name})
                command, args = rng.choice(NOISE)
                client.execute(command, args)
            for _command, arguments in steps:
                if "job-id" in arguments:
                    client.execute("block-job-cancel", {"device": arguments["job-id"], "force": True})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return raw


def inject_bug(src: str, dst: str, step: tuple[str, dict[str, Any]] = BUG_STEPS[-1]) -> None:
    """*src* with the error reply to *step* (the ``blockdev-del`` of the mirror's target) edited to success."""
    records, final_hash, sha = read_edited(src)
    target = next(r["seq"] for r in records if r.get("kind") == "command"
                  and r["msg"].get("execute") == step[0] and r["msg"].get("arguments") == step[1])
    reply = next(r for r in records if r.get("kind") == "reply" and r.get("cmd") == target)
    if "error" not in reply["msg"]:
        raise RuntimeError(f"{step[0]} did not fail as the bug needs: {reply['msg']}")
    reply["msg"] = {"return": {}, "id": reply["msg"].get("id")}
    write_derived(records, dst, {"file": os.path.basename(src), "final_hash": final_hash, "file_sha256": sha,
                                 "how": "edited: blockdev-del of a busy node answered with success (injected bug)",
                                 "records": len(records)})


def run(noise: int = 500, budget: int = GOAL_TRIES, jobs: int | None = None, seed: int = 0) -> int:
    from ..replay.ddmin import Budget
    from ..replay.engine import ReplayOptions
    from ..replay.minimize import Criterion, Settings, minimize, print_outcome
    from ..replay.run import RunOptions

    with tempfile.TemporaryDirectory(prefix="qmprr-bench-minimize-") as folder:
        started = time.monotonic()
        path = record_session(folder, noise, seed)
        print(f"recorded a session of {noise} noise commands with the bug's {len(BUG_STEPS)} steps buried in it"
              f" ({time.monotonic() - started:.1f} s)")
        settings = Settings(run=RunOptions(target="qemu"), replay=ReplayOptions(), criterion=Criterion(),
                            jobs=jobs or os.cpu_count() or 1, budget=Budget(tries=budget))
        out = os.path.join(folder, "small.jsonl")
        started = time.monotonic()
        outcome = asyncio.run(minimize(path, out, settings))
        seconds = time.monotonic() - started
        print_outcome("bug.jsonl", "small.jsonl", outcome, settings, sys.stdout)
        ratio = outcome.commands_after / KNOWN_MINIMAL
        ok = ratio <= GOAL_RATIO and outcome.tries <= GOAL_TRIES
        print(f"\nsize {outcome.commands_before} -> {outcome.commands_after} commands (known minimal"
              f" {KNOWN_MINIMAL}: {ratio:.1f}x), {outcome.tries} tries with --jobs {settings.jobs},"
              f" {seconds:.0f} s; goal <= {GOAL_RATIO:g}x in <= {GOAL_TRIES} tries: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qmprr.bench.minimize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=int, default=500, help="unrelated commands in the session (default 500)")
    parser.add_argument("--budget", type=int, default=GOAL_TRIES, help="tries (default 200)")
    parser.add_argument("--jobs", type=int, help="tries at once (default: cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.noise, args.budget, args.jobs, args.seed)


if __name__ == "__main__":
    sys.exit(main())
