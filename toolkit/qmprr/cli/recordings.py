"""``qmprr verify``, ``repair``, ``rechain`` and ``edit``: a recording's integrity, and changing one safely."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .base import EXIT_OK, EXIT_PROBLEMS, UsageError, command
from .options import add_seal_key, check_new_output, load_key


def cmd_verify(args: argparse.Namespace) -> int:
    from .. import wire
    from ..recording import verify

    key = load_key(args.key)
    report = verify(args.file, key=key, since=args.since)
    for problem in report.problems:
        print(f"{problem.file or report.path}:{problem.line}: {problem.message}")
    if len(report.files) > 1 or args.since:
        print(f"{report.path}: a set of {len(report.files)} segment(s), {os.path.basename(report.files[0])}"
              f" to {os.path.basename(report.files[-1])}")
    if report.deleted:
        print(f"{report.path}: retention deleted {len(report.deleted)} earlier segment(s) (last: {report.deleted[-1]}),"
              f" whose final hash was {report.header.previous.get('final_hash') if report.header.previous else '?'}")
    if report.torn:
        print(f"{report.path}: the last line is torn (a writer crashed mid-record);"
              " 'qmprr repair' truncates it")
    for cmd in report.in_flight:
        name = wire.command_name(cmd.msg) or "?"
        print(f"{report.path}: in flight when the log ended: seq {cmd.seq} {name} from {cmd.src}")
    header = report.header
    if header.derived_from:
        d = header.derived_from
        print(f"{report.path}: derived ({d.get('how')}) from {d.get('file')}, whose final hash was {d.get('final_hash')}")
    if not report.chain_checked:
        print(f"{report.path}: sealed (key id {header.seal.get('key_id') if header.seal else '?'}): "
              "the chain was not checked; give --key KEYFILE to check it")
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    if key is not None and report.ok:
        verdict += f", sealed with key {key.key_id}"
    print(f"{report.path}: {report.records} records, {verdict}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_repair(args: argparse.Namespace) -> int:
    from ..recording import Note, RecordWriter, RecordingReader
    from ..recording.encode import END_SEAL_TEXT

    key = load_key(args.seal_key)
    with RecordingReader(args.file, errors="skip", key=key) as reader:
        last = None
        for record in reader:
            last = record
        torn = reader.torn
        sealed = reader.header.seal is not None
    if torn is None and key is not None and sealed and not (isinstance(last, Note) and last.text == END_SEAL_TEXT):
        RecordWriter.append_to(args.file, seal_key=key).close()  # close seals the end
        print(f"{args.file}: sealed the end its writer did not reach")
        return EXIT_OK
    if torn is None:
        print(f"{args.file}: last line is complete; nothing to repair")
        return EXIT_OK
    RecordWriter.append_to(args.file, repair=True, seal_key=key).close()
    print(f"{args.file}: truncated the torn last line ({torn.size} bytes at offset {torn.offset});"
          " a note records the repair")
    return EXIT_OK


def cmd_rechain(args: argparse.Namespace) -> int:
    from ..recording.rechain import rechain

    key = load_key(args.seal_key)
    check_new_output(args.output)
    result = rechain(args.input, args.output, seal_key=key, how=args.how)
    print(f"{args.output}: {result.records} records rechained from {args.input}"
          f" (final hash {result.source_hash}){f', {result.renumbered} renumbered' if result.renumbered else ''}"
          f"{f', sealed with key {key.key_id}' if key else ''}")
    return EXIT_OK


def cmd_edit(args: argparse.Namespace) -> int:
    import shlex
    import shutil
    import subprocess
    import tempfile

    from ..recording.rechain import rechain

    key = load_key(args.seal_key)
    check_new_output(args.output)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    command = shlex.split(editor)
    if not command or shutil.which(command[0]) is None:
        raise UsageError(f"editor {editor!r} not found; set VISUAL or EDITOR")
    with tempfile.TemporaryDirectory(prefix="qmprr-edit-") as folder:
        copy = os.path.join(folder, os.path.basename(args.input))
        try:
            shutil.copyfile(args.input, copy)
        except OSError as exc:
            raise UsageError(f"{args.input}: cannot read: {exc.strerror}") from None
        os.chmod(copy, 0o600)
        with open(copy, "rb") as f:
            before = f.read()
        status = subprocess.call([*command, copy])
        if status != 0:
            print(f"qmprr: the editor exited with status {status}; nothing written", file=sys.stderr)
            return EXIT_PROBLEMS
        with open(copy, "rb") as f:
            after = f.read()
        if after == before:
            print(f"{args.input}: unchanged; {args.output} not written")
            return EXIT_OK
        result = rechain(copy, args.output, seal_key=key, how="edited")
    print(f"{args.output}: {result.records} records, edited from {args.input}"
          f"{f', sealed with key {key.key_id}' if key else ''}")
    return EXIT_OK


def register(sub: Any) -> None:
    p = command(
        sub, "verify",
        help="check a recording's integrity",
        description="Check a recording: JSON, record schema, seq continuity, the hash chain "
        "(edits, deletions, insertions, reordering), and that every reply names an earlier "
        "command. Lists commands still in flight when the log ended. A set of segments is checked "
        "segment by segment (in parallel), with the links between them; only the last may be torn.",
        note="A sealed recording's chain is keyed: without --key it is not checked (said so). "
        "With --key, verify proves the recording was written by a holder of the key: the header "
        "names the key, every link matches, the end seal is there.",
        examples=["qmprr verify session.jsonl",
                  "qmprr verify /var/log/qmprr/vm1/ --since vm1.000042.jsonl.zst",
                  "qmprr verify sealed.jsonl --key /etc/qmprr/seal.key"],
        exits="0 clean, 1 problems found (each printed with its line; with --key also: not "
        "sealed, sealed with another key, no end seal), 2 unreadable, not a recording, bad key file.",
        func=cmd_verify,
    )
    p.add_argument("file", help="recording (.jsonl, .jsonl.zst), or a segment set (its folder or first segment)")
    p.add_argument("--key", metavar="KEYFILE", help="check the seal with this key (the file given to --seal-key)")
    p.add_argument("--since", metavar="SEGMENT",
                   help="a set: verify from this segment (its file name or number) on, e.g. the last one verified")

    p = command(
        sub, "rechain",
        help="give an edited recording a new, valid chain that names the original",
        description="Read IN (its chain may be broken by an intended edit; every line must still be a "
        "record), renumber seq if lines were deleted or inserted (and the cmd of replies and fds with "
        "it), and write OUT with a new chain whose header says derived_from: the original file, its "
        "final hash and SHA-256, and how (edited). Redaction applies again.",
        examples=["sed -i '/\"kind\":\"event\"/d' copy.jsonl && qmprr rechain copy.jsonl fixed.jsonl --how 'events dropped'"],
        exits="0 written; 2 IN cannot be rechained (the line is named), OUT exists, bad key file.",
        func=cmd_rechain,
    )
    p.add_argument("input", metavar="IN", help="recording to rechain")
    p.add_argument("output", metavar="OUT", help="new recording (must not exist)")
    add_seal_key(p, help="seal OUT with this key")
    p.add_argument("--how", default="edited", help="what was done, for the header (default: edited)")

    p = command(
        sub, "edit",
        help="edit a recording in $EDITOR, then rechain it into a new file",
        description="Copy IN to a private temporary file, open it in $VISUAL or $EDITOR (default vi), "
        "and when the editor exits successfully write the result to OUT as 'qmprr rechain' does. IN "
        "is never changed.",
        examples=["EDITOR=nano qmprr edit session.jsonl session-edited.jsonl"],
        exits="0 written (or unchanged: nothing written); 1 the editor failed; 2 the edited "
        "text cannot be rechained, OUT exists, no editor, bad key file.",
        func=cmd_edit,
    )
    p.add_argument("input", metavar="IN", help="recording to edit")
    p.add_argument("output", metavar="OUT", help="new recording (must not exist)")
    add_seal_key(p, help="seal OUT with this key")

    p = command(
        sub, "repair",
        help="truncate a torn last line left by a crash",
        description="Truncate an incomplete last line (a writer crashed mid-record) and "
        "append a note that says so. Complete records are never touched. A sealed recording "
        "needs its key (--seal-key); with it, a crashed one also gets its end seal.",
        examples=["qmprr repair session.jsonl && qmprr verify session.jsonl"],
        exits="0 repaired or nothing to repair; 2 unreadable, sealed and no key, bad key file.",
        func=cmd_repair,
    )
    p.add_argument("file", help="recording (.jsonl)")
    add_seal_key(p, help="the key a sealed recording was written with")
