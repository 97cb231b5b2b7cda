"""Importers: QMP traffic logged by other programs, as ``qmprr/1`` recordings.

* :mod:`.libvirt_log` -- libvirtd / virtqemud debug logs (``qemu.qemu_monitor``
  and ``qemu.qemu_monitor_json`` at debug level), one recording per monitor
  connection; :mod:`.libvirt` builds their headers and file names;
* :mod:`.qemu_log` -- libvirt's per-VM QEMU log (argv, environment, taints);
* :mod:`.replies` -- libvirt's ``.replies`` capability corpora;
* :mod:`.writer` -- writing records with the source's times and an ``orig``
  member (timestamp, thread, line as logged);
* :mod:`.commands` -- ``qmprr import libvirt`` and ``qmprr import replies``.

See ``docs/import.md``.
"""

from .libvirt_log import Connection, LibvirtLogParser, Problem
from .qemu_log import QemuLog, QemuRun, read_qemu_log
from .replies import read_replies, write_replies
from .writer import ImportWriter, Item, LogImportError

__all__ = [
    "Connection",
    "ImportWriter",
    "Item",
    "LibvirtLogParser",
    "LogImportError",
    "Problem",
    "QemuLog",
    "QemuRun",
    "read_qemu_log",
    "read_replies",
    "write_replies",
]
