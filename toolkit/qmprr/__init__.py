"""qmprr: record and replay QEMU monitor (QMP) sessions.

Layers, lowest first (a layer never imports a higher one):

* :mod:`qmprr.codec`, :mod:`qmprr.wire` -- JSON encoding and QMP stream framing, no I/O;
* :mod:`qmprr.recording` -- the ``qmprr/1`` log: records, writer, reader, verification;
* :mod:`qmprr.analysis` -- reading a recording for people;
* :mod:`qmprr.cli` -- the ``qmprr`` command.
"""

__version__ = "0.1.0"
