"""``qmprr domain``: ``argv`` (domain XML to QEMU command line) and ``from-argv`` (the reverse).

Handlers return the exit status; errors are :class:`~qmprr.errors.QmprrError`
(exit status 2) that the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from .base import UsageError, command, group


class DomainUsageError(UsageError):
    """The ``qmprr domain`` command line is wrong."""


def _read_stdin() -> bytes:
    """Standard input, refused past the domain XML size limit (``/dev/zero`` must not fill memory)."""
    from ..domain.errors import UnsafeXMLError
    from ..domain.safe import MAX_BYTES

    data = sys.stdin.buffer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise UnsafeXMLError(f"standard input: over {MAX_BYTES:,} bytes is more than a domain XML needs")
    return data


def cmd_argv(args: argparse.Namespace) -> int:
    from ..domain import build_launch

    source: Any = _read_stdin() if args.domain == "-" else args.domain
    spec = build_launch(source, ignore_unsupported=args.ignore_unsupported)
    for warning in spec.warnings:
        print(f"qmprr: warning: {warning}", file=sys.stderr)
    env_words = [f"{name}={value}" for name, value in spec.env.items()]
    if args.format == "json":
        print(json.dumps({"argv": spec.argv, "env": spec.env}, ensure_ascii=False, indent=2))
    elif args.format == "shell":
        print(shlex.join(env_words + spec.argv))
    else:
        for word in env_words + spec.argv:
            print(word)
    return 0


def cmd_from_argv(args: argparse.Namespace) -> int:
    from ..domain import from_argv

    words = list(args.qemu_argv)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise DomainUsageError("give the QEMU command line after '--', e.g. -- qemu-system-x86_64 -machine q35")
    sys.stdout.write(from_argv(words))
    return 0


def register(subparsers: Any) -> None:
    """Add ``domain`` (with ``argv`` and ``from-argv``) to the ``qmprr`` subcommands."""
    sub = group(subparsers, "domain",
                help="domain XML (libvirt, qemu namespace) to a QEMU command line and back",
                description="Turn a libvirt domain XML with the qemu namespace into the QEMU command line "
                "that starts it, or a QEMU command line into a domain XML. See docs/domain.md.",
                dest="domain_command", metavar="SUBCOMMAND")
    exits = "0 ok, 2 the input cannot be used (the message names the line)."
    p = command(
        sub, "argv",
        help="print the QEMU command line for a domain XML",
        description="Print the QEMU command line for DOMAIN.xml: first NAME=VALUE for each "
        "<qemu:env>, then the binary and its arguments, one word per line (or one shell line "
        "with --shell, or JSON with --json). Unsupported elements, attributes and values are "
        "errors naming their line, unless --ignore-unsupported drops them (listed on stderr).",
        examples=["qmprr domain argv examples/domain/lab.xml --shell",
                  "virsh dumpxml vm1 | qmprr domain argv - --ignore-unsupported --json"],
        exits=exits, func=cmd_argv,
    )
    p.add_argument("domain", metavar="DOMAIN.xml", help="domain XML file ('-': standard input)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--shell", dest="format", action="store_const", const="shell",
                      help="one shell-quoted line (environment assignments first)")
    form.add_argument("--json", dest="format", action="store_const", const="json",
                      help='JSON: {"argv": [...], "env": {...}} (safe for words with newlines)')
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="drop unsupported parts with a warning on stderr instead of failing")
    p.set_defaults(format="lines")

    p = command(
        sub, "from-argv",
        help="print a domain XML for a QEMU command line",
        description="Print a domain XML for the QEMU command line after '--' (leading NAME=VALUE "
        "words become <qemu:env>). Options with a key=value form become structured elements "
        "(<qemu:device driver='...'>), other words <qemu:arg>; 'qmprr domain argv' of the "
        "result gives the same command line back.",
        examples=["qmprr domain from-argv -- qemu-system-x86_64 -machine q35 -device virtio-rng-pci,id=rng0"],
        exits=exits, func=cmd_from_argv,
    )
    p.add_argument("qemu_argv", nargs=argparse.REMAINDER, metavar="-- QEMU ARGV...")
