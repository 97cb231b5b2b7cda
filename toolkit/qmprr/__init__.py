"""qmprr: record and replay QEMU monitor (QMP) sessions.

Layers, lowest first (a layer never imports a higher one):

* :mod:`qmprr.codec`, :mod:`qmprr.wire` -- QEMU's JSON and QMP stream framing, no I/O;
  :mod:`qmprr.qemuopts` -- QEMU's option strings; :mod:`qmprr.files` -- bounded reads, safe writes;
  :mod:`qmprr.validate` -- user-written tables checked by cattrs;
* :mod:`qmprr.recording` -- the ``qmprr/1`` log: records, writer, reader, verification, redaction;
* :mod:`qmprr.channel_core` -- the channel's rules, sans-IO; :mod:`qmprr.channel` -- its
  asyncio driver, the one connection to QEMU;
* :mod:`qmprr.session` -- one client's QMP session, sans-IO; :mod:`qmprr.server` -- the
  proxy's sockets and serve loop (over a channel or a recording);
* :mod:`qmprr.sandbox`, :mod:`qmprr.launch` -- starting QEMU (sandboxed);
  :mod:`qmprr.qemu_channel` -- QEMU behind a channel, in a work folder;
  :mod:`qmprr.service` -- ``launch`` and ``proxy`` put together;
* :mod:`qmprr.domain` -- QEMU command lines and libvirt domain XML, both ways;
* :mod:`qmprr.fake`, :mod:`qmprr.replay` -- a recording served as a fake QEMU, and replayed
  against a fake or a real one (the replay targets use the fake); :mod:`qmprr.results` -- the
  typed results of ``diff`` and ``replay`` as JSON and back;
* :mod:`qmprr.importers` -- recordings from libvirt and QEMU logs;
* :mod:`qmprr.analysis` -- reading a recording for people; :mod:`qmprr.bench` -- benchmarks;
* :mod:`qmprr.pytest_plugin` (its marker: :mod:`qmprr.plugin_markers`) -- recordings in tests;
* :mod:`qmprr.libvirt` -- libvirt's emulator wrapper and its recorder;
* :mod:`qmprr.cli` -- the ``qmprr`` command, a module per group of subcommands.
"""

__version__ = "0.1.0"
