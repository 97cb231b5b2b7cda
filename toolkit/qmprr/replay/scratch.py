"""Scratch images: blank disks for a replay, made from the descriptions a recording keeps.

A recording describes the images its argv and commands named (format,
virtual size, cluster size, backing chain; never data: see
:mod:`qmprr.images`). Before QEMU starts, every image the replay will open
that is missing here (or each one, with ``--scratch-images``) is made blank
with ``qemu-img create`` inside the work folder: a relative name where it
resolves there, any other under ``WORKDIR/scratch/`` with a path mapping
from the recorded name. Nothing is created outside the work folder, whatever
the recording says.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from .. import images
from .safety import PathMap
from .script import Script

#: Where images with an absolute (or escaping) recorded name are made, inside the work folder.
SCRATCH_DIR = "scratch"


@attrs.define
class Scratch:
    """What :func:`prepare` did: the path mapping to add, what it made, what it could not."""

    pairs: list[tuple[str, str]] = attrs.Factory(list)
    created: list[str] = attrs.Factory(list)  # descriptions, for the summary
    problems: list[str] = attrs.Factory(list)


def descriptions(script: Script) -> dict[str, dict[str, Any]]:
    """Every valid image description in the recording, by recorded name (the last one wins)."""
    found: list[Any] = list(script.header.images or []) if script.header is not None else []
    for ex in script.exchanges:
        if ex.command in ("query-named-block-nodes", "query-block") and ex.reply and "return" in ex.reply:
            found += images.from_block_nodes(ex.reply["return"])
    found += script.images  # notes: described at record time, preferred over what replies said
    return {d["path"]: d for d in found if images.valid(d)}


def needed(script: Script) -> list[str]:
    """The image names the replay will open: the argv's, then the commands'."""
    argv = list(script.header.qemu_argv or []) if script.header is not None else []
    names = images.named_in_argv(argv)
    for ex in script.exchanges:
        names += images.named_in_command(ex.msg)
    return list(dict.fromkeys(names))


def prepare(script: Script, workdir: str, path_map: PathMap, *, always: bool = False) -> Scratch:
    """Make the blank images the replay of *script* in *workdir* needs (every described one if *always*)."""
    out = Scratch()
    workdir = os.path.realpath(workdir)
    known = descriptions(script)
    for name in needed(script):
        mapped = path_map.rewrite(name)
        here = mapped if os.path.isabs(mapped) else os.path.join(workdir, mapped)
        if os.path.exists(here) and not always:
            continue
        desc = known.get(name)
        if desc is None:
            if not os.path.exists(here):
                out.problems.append(f"image {name} is missing and the recording does not describe it"
                                    " (record it again with this qmprr, or give it with --map-path)")
            continue
        where = os.path.normpath(os.path.join(workdir, name))
        if os.path.isabs(name) or not where.startswith(workdir + os.sep) or (always and os.path.exists(where)):
            parts = [p for p in name.split("/") if p not in ("", ".", "..")] or ["image"]
            where = os.path.join(workdir, SCRATCH_DIR, *parts)
            out.pairs.append((name, where))
        try:
            made = images.create(desc, where, root=workdir)
        except images.CreateError as exc:
            out.problems.append(f"cannot make a scratch image for {name}: {exc}")
            continue
        if made:  # (a --workdir may hold those of an earlier replay: used as they are)
            out.created.append(images.summary(desc))
    return out
