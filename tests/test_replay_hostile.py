"""A corpus of hostile recordings (tests/hostile_corpus.py) against ``qmprr replay --target qemu``.

Each recording has a valid hash chain and a marker (a file outside the
replay's folders that the attack would create or change, or a host TCP
listener it would reach). The marker must not fire with the default defences,
nor with the checks off and the sandbox alone; the caller's folder stays empty.
The ``slow`` test shows the attacks are live: with ``--allow-unsafe`` they fire.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_corpus import CASES, DETACHES, Case, prepare, refused_by_checks, replay

pytestmark = pytest.mark.qemu

#: Attacks the checks let through on purpose: the work folder or the sandbox contains them.
CONTAINED = frozenset({"relative-in-caller-folder", "qmp-migrate-tcp", "qmp-chardev-add-tcp"})


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 37
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_recording_is_refused_or_contained(case: Case, tmp_path: Path) -> None:
    prepared = prepare(case, tmp_path)
    status, output = replay(prepared, "default")
    assert not prepared.got_through(), output
    assert not any(prepared.caller.iterdir())
    if case.name not in CONTAINED:
        assert refused_by_checks(status, output), output  # the checks say what was refused, and why


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_sandbox_alone_stops_it(case: Case, tmp_path: Path) -> None:
    prepared = prepare(case, tmp_path)
    status, output = replay(prepared, "sandbox-only")
    assert not prepared.got_through(), output
    assert "refusing the recorded QEMU command line" not in output  # the checks were really off


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.live and c.name not in DETACHES], ids=lambda c: c.name)
def test_the_attack_is_live_without_defences(case: Case, tmp_path: Path) -> None:
    prepared = prepare(case, tmp_path)
    status, output = replay(prepared, "unsafe")
    assert prepared.got_through(), output
