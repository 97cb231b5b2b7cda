"""Record time: describe the images a session's commands open, in ``note`` records.

:class:`ImageWatcher` wraps the proxy's backend (the channel): before a
``blockdev-add`` or an HMP ``drive_add`` goes to QEMU, it describes each
image file the command names that exists (:func:`qmprr.images.describe_async`;
a few milliseconds of ``qemu-img info``, once per name) and appends a
``note`` ``{"images": [...]}``, so the note precedes the command. Only names that
survive redaction (as the log keeps the command) are described, so a path a
redaction rule hides is never written out.
"""

from __future__ import annotations

import os
from typing import Any

from . import images
from .recording.redact import REDACTED

#: The note's text (replay reads its data, not its text).
NOTE_TEXT = "images named by a command: format, size and backing chain (no data)"


class ImageWatcher:
    """The backend, with image descriptions noted after image-opening commands (else delegated)."""

    def __init__(self, backend: Any, cwd: str | None = None) -> None:
        self._backend = backend
        self._cwd = cwd or os.getcwd()
        self._seen: set[str] = set()
        if hasattr(backend, "submit"):  # the channel's callback path (the serve loop's hot path)
            self.submit = self._submit

    def _new_paths(self, msg: dict[str, Any]) -> list[str]:
        if msg.get("execute") not in images.IMAGE_COMMANDS:
            return []
        paths = [p for p in images.named_in_command(self._as_logged(msg)) if p not in self._seen and REDACTED not in p]
        self._seen.update(paths)
        return paths

    def _submit(self, msg: dict[str, Any], **kwargs: Any) -> Any:
        """The note (qemu-img run here: a few ms, once per image name, image commands only), then the command."""
        paths = self._new_paths(msg)
        if paths:
            self._write_note([images.describe(p, self._cwd) for p in paths])
        return self._backend.submit(msg, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def execute(self, msg: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        paths = self._new_paths(msg)
        if paths:  # before the command: the image as QEMU is about to open it (the note precedes the command)
            self._write_note([await images.describe_async(p, self._cwd) for p in paths])
        reply: dict[str, Any] = await self._backend.execute(msg, **kwargs)
        return reply

    def _as_logged(self, msg: dict[str, Any]) -> dict[str, Any]:
        log = getattr(self._backend, "log", None)
        redactor = getattr(log, "redactor", None)
        return redactor.redact(msg) if redactor is not None else msg

    def _write_note(self, described: list[dict[str, Any] | None]) -> None:
        found = [d for d in described if d is not None]
        if found:
            self._backend.note(NOTE_TEXT, {"images": found})
