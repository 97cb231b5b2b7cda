"""Record time: describe the images a session's commands open, in ``note`` records.

:class:`ImageWatcher` wraps the proxy's backend (the channel): once QEMU
has opened the images of a ``blockdev-add`` or an HMP ``drive_add`` (the
command succeeded), it describes each image file the command names
(:func:`qmprr.images.describe_async`; a few milliseconds of ``qemu-img info``,
once per name) and appends a ``note`` ``{"images": [...]}`` after it. qemu-img
reads an image as QEMU does (the command's format, its backing file only
where QEMU follows it), and never one QEMU refused: a client cannot make the
recorder read what QEMU could not. Only names that survive redaction (as the
log keeps the command) are described, so a path a redaction rule hides is
never written out.

A relative name is QEMU's: it is read in QEMU's folder (``/proc/PID/cwd`` of
the QEMU process, which is where QEMU opened it, wherever qmprr runs), never
in qmprr's; when QEMU's folder is unknown, relative names are not described.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from . import images
from .recording import ABSENT
from .recording.redact import REDACTED

#: The note's text (replay reads its data, not its text).
NOTE_TEXT = "images named by a command: format, size and backing chain (no data)"


#: What ``/proc/PID/exe`` of a QEMU names (``qemu-system-x86_64``, a distribution's ``qemu-kvm``).
_QEMU_EXE = re.compile(r"^qemu-(?:system-[A-Za-z0-9_.-]+|kvm)$")


class QemuFolder:
    """Where a running QEMU resolves relative names: ``/proc/PID/cwd`` (its folder, seen
    through the kernel, so in QEMU's own mount namespace too), while that process runs.

    Held by a pidfd, so a pid reused by another process after QEMU exits never
    names that process's folder.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd

    def path(self) -> str | None:
        """``/proc/PID/cwd``, or None once QEMU has exited."""
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except OSError:
            return None
        return f"/proc/{self.pid}/cwd"

    def close(self) -> None:
        os.close(self._pidfd)


def _exe(pid: int) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
    except OSError:
        return None


def qemu_folder(pid: int | None) -> QemuFolder | None:
    """The folder of QEMU process *pid*; None when *pid* is unknown or not a QEMU.

    The pid may be a socket peer's (``SO_PEERCRED``): the process that called
    ``listen()``, which is not always QEMU (a launcher that passed the socket
    on, a relay), hence the check of its program.
    """
    if pid is None:
        return None
    exe = _exe(pid)
    if exe is None or not _QEMU_EXE.match(exe):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if _exe(pid) != exe:  # the pid changed hands between the two looks
        os.close(pidfd)
        return None
    return QemuFolder(pid, pidfd)


def _opened(msg: dict[str, Any], reply: Any) -> bool:
    """Whether the command succeeded (an HMP command's errors are in its ``return`` text; ``drive_add`` says OK)."""
    if not isinstance(reply, dict) or "return" not in reply:
        return False
    done = reply["return"]
    return msg.get("execute") != "human-monitor-command" or (isinstance(done, str) and done.strip() == "OK")


class ImageWatcher:
    """The backend, with image descriptions noted after image-opening commands (else delegated)."""

    def __init__(self, backend: Any, cwd: str | QemuFolder | None = None) -> None:
        """*cwd*: the folder QEMU resolves relative names in (:func:`qemu_folder`); None: unknown."""
        self._backend = backend
        self._folder = cwd
        self._seen: set[str] = set()
        if hasattr(backend, "submit"):  # the channel's callback path (the serve loop's hot path)
            self.submit = self._submit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    @property
    def closed_reason(self) -> str | None:
        """The backend's (the serve loop reads it for every message: no ``__getattr__`` detour)."""
        reason: str | None = self._backend.closed_reason
        return reason

    async def execute(self, msg: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self._backend.execute(msg, **kwargs)
        opened = self._newly_opened(msg, reply)
        if opened:  # after QEMU opened them: never a file QEMU refused
            await self._note(opened)
        return reply

    def _submit(self, msg: dict[str, Any], *, done: Any, src: str = "library", role: str = "primary",
                client_id: Any = ABSENT, tx: Any = None, fds: Any = (), fd_info: Any = (),
                body: bytes | None = None) -> Any:
        """The channel's ``submit``; once QEMU opened the images, their note (qemu-img run here: a few ms,
        once per image name, image commands only), then the reply goes on.

        Its arguments are the channel's, named (no ``**kwargs`` to pack and unpack per command).
        """
        if msg.get("execute") in images.IMAGE_COMMANDS:
            done = self._noting(msg, done)
        return self._backend.submit(msg, done=done, src=src, role=role, client_id=client_id, tx=tx,
                                    fds=fds, fd_info=fd_info, body=body)

    def _noting(self, msg: dict[str, Any], done: Any) -> Any:
        """*done*, after noting the images *msg* opened."""

        def after(reply: dict[str, Any] | None, error: Any) -> None:
            opened = self._newly_opened(msg, reply) if error is None else []
            if opened:
                cwd = self._cwd()
                self._write_note([images.describe(p, cwd, f, c) for p, f, c in opened])
            done(reply, error)

        return after

    def _newly_opened(self, msg: dict[str, Any], reply: Any) -> list[images.Opened]:
        """The images a successful image command opened, not described yet (and not hidden by redaction)."""
        if msg.get("execute") not in images.IMAGE_COMMANDS or not _opened(msg, reply):
            return []
        known = self._cwd() is not None
        opened = [o for o in images.opened_in_command(self._as_logged(msg))
                  if o[0] not in self._seen and REDACTED not in o[0]
                  and (known or os.path.isabs(o[0]))]  # fmt: skip
        self._seen.update(o[0] for o in opened)
        return opened

    def _cwd(self) -> str | None:
        """QEMU's folder now (None: unknown, or QEMU has exited)."""
        folder = self._folder
        return folder.path() if isinstance(folder, QemuFolder) else folder

    def _as_logged(self, msg: dict[str, Any]) -> dict[str, Any]:
        log = getattr(self._backend, "log", None)
        redactor = getattr(log, "redactor", None)
        return redactor.redact(msg) if redactor is not None else msg

    async def _note(self, opened: list[images.Opened]) -> None:
        cwd = self._cwd()
        self._write_note([await images.describe_async(p, cwd, f, c) for p, f, c in opened])

    def _write_note(self, described: list[dict[str, Any] | None]) -> None:
        found = [d for d in described if d is not None]
        if found:
            self._backend.note(NOTE_TEXT, {"images": found})
