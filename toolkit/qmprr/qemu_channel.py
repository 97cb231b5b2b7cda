"""QEMU started behind a :class:`~qmprr.channel.Channel`, in a work folder: the one way.

:func:`qemu_channel` starts QEMU (:func:`~qmprr.launch.start_qemu`) in its
folder, opens the channel on its private monitor (QEMU's own message when it
dies at start-up), and on the way out closes the channel and its log and
stops QEMU. :func:`work_folder` is the temporary folder QEMU runs in (the only
one it may write in its sandbox): given as ``cwd``, never by changing this
process's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .channel import Channel
from .errors import QmprrError
from .launch import LaunchedQemu, LaunchError, start_qemu
from .sandbox import Sandbox


@contextlib.contextmanager
def work_folder(prefix: str = "qmprr-", *, keep: bool = False) -> Iterator[str]:
    """A new temporary folder, removed on the way out unless *keep* (then its path is printed)."""
    if keep:
        folder = tempfile.mkdtemp(prefix=prefix)
        print(f"qmprr: the work folder is kept: {folder}", file=sys.stderr)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as folder:
        yield folder


@contextlib.asynccontextmanager
async def qemu_channel(
    argv: list[str],
    make_log: Callable[[dict[str, Any]], Any],
    *,
    workdir: str | None = None,
    env: dict[str, str] | None = None,
    sandbox: Sandbox | None = None,
    started: Callable[[LaunchedQemu], None] | None = None,
    **channel_options: Any,
) -> AsyncIterator[tuple[LaunchedQemu, Channel]]:
    """Start QEMU from *argv* (in *workdir*, with *env* added, in *sandbox*); yield it and the channel to it.

    *make_log* makes the channel's log from QEMU's greeting; *started* is told
    the launched QEMU (to watch how it ends); *channel_options* go to
    :meth:`Channel.open`. Raises :class:`~qmprr.launch.LaunchError` when QEMU
    cannot start or dies before its greeting.
    """
    qemu = await start_qemu(argv, env, sandbox=sandbox, cwd=workdir)
    if started is not None:
        started(qemu)
    try:
        reader, writer = await asyncio.open_unix_connection(sock=qemu.monitor)
        try:
            channel = await Channel.open(reader, writer, make_log, **channel_options)
        except QmprrError as exc:
            raise await qemu.fail_startup(exc) from None
        try:
            yield qemu, channel
        finally:
            await channel.close()
            channel.log.close()
    finally:
        if qemu.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                qemu.process.kill()
        with contextlib.suppress(LaunchError):
            await qemu.wait()
