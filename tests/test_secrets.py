"""Secrets never reach a file qmprr writes (issue 10), hostile by construction.

One random marker secret goes through every redaction rule; then every file
under the test's output folder (recordings, replay's recording and report,
show/stats/report/export/verify output) is searched for it, as bytes.

Two layers of tests:

* ``test_rule_alone`` -- each rule with a fresh writer, so no other rule (and
  no value learned from an earlier record) can hide a missing one: removing
  any rule fails its case. QEMU's replies are real (a QEMU started with a
  file-based secret holding the marker, and a VNC display).
* ``test_marker_reaches_no_file_end_to_end`` -- everything at once through
  ``qmprr launch --domain`` (argv, JSON ``-object``, ``qemu:arg``), client
  sockets, unparsable input, ``replay --secret --record --report`` and every
  analysis command.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import support
from qmprr.client import QmpClient
from qmprr.recording import REDACTED, Command, Local, Reply, RecordWriter, new_header, read_records

pytestmark = pytest.mark.qemu

MARKER = "Mk" + secrets.token_hex(12)  # random each run: nothing can know it in advance
NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def files_holding(folder: Path, needle: str) -> list[str]:
    """Every regular file under *folder* whose bytes contain *needle* (also JSON/XML-escaped)."""
    forms = {needle.encode(), json.dumps(needle)[1:-1].encode()}
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(f in data for f in forms):
                hits.append(str(path.relative_to(folder)))
    return hits


def hmp(line: str) -> dict[str, Any]:
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}}


class RawQmp:
    """A bare QMP connection straight to QEMU (no qmprr in between)."""

    def __init__(self, path: str) -> None:
        import time

        deadline = time.monotonic() + 20
        while True:  # the socket file appears at bind(), before QEMU listens
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(20)
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()
        self.execute({"execute": "qmp_capabilities"})

    def _read(self) -> dict[str, Any]:
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def execute(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        return self._read()


@pytest.fixture(scope="module")
def secret_qemu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawQmp]:
    """QEMU with a VNC display and secret ``sf`` read from a file holding the marker.

    The marker is never on a command line qmprr sees: only QEMU's replies can carry it.
    """
    folder = tmp_path_factory.mktemp("secret-qemu")
    (folder / "marker.txt").write_text(MARKER)
    argv = [*support.QEMU_NONE, "-vnc", "none", "-object", f"secret,id=sf,file={folder / 'marker.txt'}"]
    with support.qemu_with_qmp(folder, argv) as (_proc, sock):
        client = RawQmp(sock)
        yield client
        client.sock.close()


# -- each rule alone -------------------------------------------------------------

#: case -> (header fields, command, whether QEMU's real reply must hold the marker)
COMMAND_CASES: dict[str, tuple[dict[str, Any], dict[str, Any] | None, bool]] = {
    "argv -object secret,data=": (
        {"qemu_argv": ["qemu-system-x86_64", "-object", f"secret,id=s0,data={MARKER},format=raw"]}, None, False),
    "argv --object qom-type= later": (
        {"qemu_argv": ["qemu-system-x86_64", "--object", f"id=s0,qom-type=secret,data={MARKER}"]}, None, False),
    "argv -object JSON (libvirt 9.0)": (
        {"qemu_argv": ["qemu-system-x86_64", "-object",
                       json.dumps({"qom-type": "secret", "id": "s0", "data": MARKER, "format": "raw"})]}, None, False),
    "argv -spice password=": (
        {"qemu_argv": ["qemu-system-x86_64", "-spice", f"port=5900,password={MARKER}"]}, None, False),
    "argv escaped comma": (
        {"qemu_argv": ["qemu-system-x86_64", "-object", f"secret,id=s0,data={MARKER},,tail"]}, None, False),
    "domain XML qemu:arg": (
        {"domain_xml": f"<domain xmlns:qemu='{NS}'><name>x</name><qemu:commandline>"
                       f"<qemu:arg value='-object'/><qemu:arg value='secret,id=s0,data={MARKER}'/>"
                       "</qemu:commandline></domain>"}, None, False),
    "domain XML qemu:arg JSON": (
        {"domain_xml": f"<domain xmlns:qemu='{NS}'><qemu:commandline><qemu:arg value='-object'/>"
                       f"<qemu:arg value='{{&quot;qom-type&quot;:&quot;secret&quot;,&quot;data&quot;:&quot;{MARKER}&quot;}}'/>"
                       "</qemu:commandline></domain>"}, None, False),
    "domain XML graphics passwd": (
        {"domain_xml": f"<domain><devices><graphics type='vnc' passwd='{MARKER}'/></devices></domain>"}, None, False),
    "QMP object-add secret": (
        {}, {"execute": "object-add", "arguments": {"qom-type": "secret", "id": "s1", "data": MARKER}}, False),
    "QMP qom-set secret data": (
        {}, {"execute": "qom-set", "arguments": {"path": "/objects/sf", "property": "data", "value": MARKER}}, False),
    "QMP qom-get secret data (reply)": (
        {}, {"execute": "qom-get", "arguments": {"path": "/objects/sf", "property": "data"}}, True),
    "QMP qom-get partial path (reply)": (
        {}, {"execute": "qom-get", "arguments": {"path": "sf", "property": "data"}}, True),
    "QMP set_password": (
        {}, {"execute": "set_password", "arguments": {"protocol": "vnc", "password": MARKER}}, False),
    "QMP change-vnc-password": ({}, {"execute": "change-vnc-password", "arguments": {"password": MARKER}}, False),
    "QMP block_passwd": (
        {}, {"execute": "block_passwd", "arguments": {"device": "d", "password": MARKER}}, False),
    "HMP set_password": ({}, hmp(f"set_password vnc {MARKER}"), False),
    "HMP set_password quoted": ({}, hmp(f'set_password vnc "{MARKER}"'), False),
    "HMP set_password quoted protocol": ({}, hmp(f'set_password "vnc" {MARKER}'), False),
    "HMP set_password quoted with space": ({}, hmp(f'set_password vnc "a {MARKER} b"'), False),
    "HMP set_password tabs": ({}, hmp(f"\tset_password\tvnc\t{MARKER}\tkeep"), False),
    "HMP set_password echoed in error": ({}, hmp(f"set_password vnc x {MARKER}"), True),
    "HMP change vnc password": ({}, hmp(f"change vnc password {MARKER}"), False),
    "HMP change vnc passwd quoted": ({}, hmp(f'change vnc passwd "{MARKER}"'), False),
    "HMP block_passwd": ({}, hmp(f"block_passwd d {MARKER}"), False),
    "HMP object_add secret": ({}, hmp(f"object_add secret,id=s2,data={MARKER}"), False),
    "HMP qom-set secret data": ({}, hmp(f"qom-set /objects/sf data {MARKER}"), False),
    "HMP qom-get secret data (reply)": ({}, hmp("qom-get /objects/sf data"), True),
}


@pytest.mark.parametrize("case", list(COMMAND_CASES))
def test_rule_alone(case: str, tmp_path: Path, secret_qemu: RawQmp) -> None:
    fields, msg, reply_holds_marker = COMMAND_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    with RecordWriter.create(out / "rec.jsonl", new_header(**fields), sync="none") as log:
        if msg is not None:
            cmd = log.append(Command(src="primary-1", role="primary", msg=msg))
            reply = secret_qemu.execute(msg)  # QEMU's real answer
            assert (MARKER in json.dumps(reply)) == reply_holds_marker, reply
            log.append(Reply(cmd=cmd.seq, msg=reply))
    assert files_holding(out, MARKER) == []
    assert b"qmprr-redacted" in (out / "rec.jsonl").read_bytes()  # in XML: &lt;qmprr-redacted&gt;
    assert subprocess.run([*support.QMPRR, "verify", str(out / "rec.jsonl")], capture_output=True).returncode == 0


def test_unparsable_input_is_logged_as_hash_and_length(tmp_path: Path) -> None:
    raw = b'{"execute":"object-add","arguments":{"qom-type":"secret","id":"s","data":"' + MARKER.encode() + b'"]}'
    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none") as log:
        log.append(Local(src="p", role="primary", input=raw, reply={"error": {"class": "GenericError", "desc": "x"}}))
        log.append(Local(src="p", role="primary", input=raw.decode(), reply={"error": {"class": "GenericError", "desc": "x"}}))
    assert files_holding(tmp_path, MARKER) == []
    locals_ = [r for r in read_records(tmp_path / "rec.jsonl") if isinstance(r, Local)]
    import hashlib

    assert all(r.input is None and r.input_len == len(raw) for r in locals_)
    assert all(r.input_sha256 == hashlib.sha256(raw).hexdigest() for r in locals_)


def test_keep_input_keeps_the_bytes(tmp_path: Path) -> None:
    from qmprr.recording import Redactor

    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none", redactor=Redactor(keep_input=True)) as log:
        log.append(Local(src="p", role="primary", input=b"xyz\xff", reply={"error": {"class": "E", "desc": "x"}}))
    (local,) = [r for r in read_records(tmp_path / "rec.jsonl") if isinstance(r, Local)]
    assert local.input == "xyz\\xff" and local.input_sha256 is None


def test_redacted_value_is_taken_out_of_later_records(tmp_path: Path) -> None:
    # A value learned from one command is taken out of everything after it.
    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none") as log:
        c = log.append(Command(src="p", role="primary", msg={"execute": "object-add", "arguments": {
            "qom-type": "secret", "id": "s", "data": MARKER}}))
        log.append(Reply(cmd=c.seq, msg={"error": {"class": "GenericError", "desc": f"bad {MARKER}!"}}))
        c = log.append(Command(src="p", role="primary", msg={"execute": "x-anything", "arguments": {"v": MARKER}}))
        log.append(Reply(cmd=c.seq, msg={"return": {MARKER: 1}}))
    assert files_holding(tmp_path, MARKER) == []
    records = list(read_records(tmp_path / "rec.jsonl"))
    assert records[2].msg["error"]["desc"] == f"bad {REDACTED}!"


def test_redaction_works_at_the_deepest_nesting_qemu_accepts(tmp_path: Path) -> None:
    # QEMU takes 1024 levels; Python's recursion stops near 1000: redaction must not recurse.
    deep: Any = MARKER
    for _ in range(1020):
        deep = [deep]
    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none") as log:
        c = log.append(Command(src="p", role="primary", msg={"execute": "object-add", "arguments": {
            "qom-type": "secret", "id": "s", "data": MARKER, "x": deep}}))
        log.append(Reply(cmd=c.seq, msg={"return": {"echo": deep}}))
        log.append(Command(src="p", role="primary", msg={"execute": "x-later", "arguments": {"v": deep}}))
    assert files_holding(tmp_path, MARKER) == []
    assert len(list(read_records(tmp_path / "rec.jsonl"))) == 4


def test_other_commands_replies_are_untouched(tmp_path: Path) -> None:
    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none") as log:
        c = log.append(Command(src="p", role="primary", msg={"execute": "qom-get", "arguments": {
            "path": "/machine", "property": "type"}}))
        log.append(Reply(cmd=c.seq, msg={"return": "none-machine"}))
    assert list(read_records(tmp_path / "rec.jsonl"))[2].msg == {"return": "none-machine"}


# -- everything at once, through qmprr ------------------------------------------------


def domain_xml(marker_file: Path) -> str:
    json_object = json.dumps({"qom-type": "secret", "id": "sj", "data": MARKER}).replace('"', "&quot;")
    return f"""<domain type='qemu' xmlns:qemu='{NS}'>
  <name>secret-lab</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><emulator>{support.QEMU}</emulator></devices>
  <qemu:commandline>
    <qemu:arg value='-S'/>
    <qemu:arg value='-vnc'/><qemu:arg value='none'/>
    <qemu:arg value='-object'/><qemu:arg value='secret,id=sd,data={MARKER}'/>
    <qemu:arg value='-object'/><qemu:arg value="{json_object}"/>
    <qemu:arg value='-object'/><qemu:arg value='secret,id=sf,file={marker_file}'/>
  </qemu:commandline>
</domain>
"""


CLIENT_COMMANDS = [msg for _, msg, _ in COMMAND_CASES.values() if msg is not None]


def send_garbage(path: str) -> bytes:
    """Unparsable input that starts like a secret-bearing command; returns the error reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(path)
        f = s.makefile("rwb")
        f.readline()
        f.write(b'{"execute":"qmp_capabilities"}\n')
        f.flush()
        f.readline()
        f.write(b'{"execute":"object-add","arguments":{"qom-type":"secret","id":"sg","data":"'
                + MARKER.encode() + b'"]}\n')
        f.flush()
        return f.readline()


def run(out: Path, name: str, *args: str) -> int:
    with open(out / f"{name}.out", "wb") as o, open(out / f"{name}.err", "wb") as e:
        return subprocess.run([*support.QMPRR, *args], stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                              timeout=120).returncode


def test_marker_reaches_no_file_end_to_end(tmp_path: Path) -> None:
    given, out = tmp_path / "given", tmp_path / "out"  # inputs hold the marker by design; outputs must not
    given.mkdir()
    out.mkdir()
    (given / "marker.txt").write_text(MARKER)
    (given / "lab.xml").write_text(domain_xml(given / "marker.txt"))
    support.require_qemu()
    rec, sock, dbg = out / "rec.jsonl", str(out / "p.sock"), str(out / "d.sock")
    with open(out / "launch.err", "wb") as err:
        proc = subprocess.Popen([*support.QMPRR, "launch", "--record", str(rec), "--socket", sock,
                                 "--debug-socket", dbg, "--domain", str(given / "lab.xml")],
                                stdin=subprocess.DEVNULL, stderr=err)
    try:
        support.wait_for_socket(dbg, proc=proc)
        replies = []
        with QmpClient(sock) as client:
            for msg in CLIENT_COMMANDS:
                replies.append(client.execute_msg(msg))
        with QmpClient(dbg) as client:  # debug clients are redacted alike
            replies.append(client.execute_msg(hmp(f"set_password vnc {MARKER}")))
        garbage_reply = send_garbage(sock)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    # The clients did get the secrets QEMU returned: only the log is redacted.
    assert any(r.get("return") == MARKER for r in replies)
    assert b"error" in garbage_reply
    # replay, with the secret given back: it reaches QEMU, but none of replay's files.
    secrets_args = [f"--secret={key}={MARKER}" for key in
                    ("s1", "s2", "vnc", "qom-set", "change-vnc-password", "human-monitor-command", "block_passwd")]
    run(out, "replay", "replay", str(rec), "--target", "qemu", "--keep-going", "--workdir", str(out),
        f"--map-path={given}={given}",
        "--record", str(out / "replayed.jsonl"), "--report", str(out / "replay-report.json"), *secrets_args)
    assert (out / "replayed.jsonl").exists() and (out / "replay-report.json").exists()
    for recording in (rec, out / "replayed.jsonl"):
        stem = recording.stem
        assert run(out, f"verify-{stem}", "verify", str(recording)) == 0
        run(out, f"show-{stem}", "show", str(recording))
        run(out, f"show-json-{stem}", "show", "--json", str(recording))
        run(out, f"stats-{stem}", "stats", str(recording))
        run(out, f"stats-json-{stem}", "stats", "--json", str(recording))
        run(out, f"report-{stem}", "report", str(recording), "-o", str(out / f"{stem}.html"))
        run(out, f"export-{stem}", "export", str(recording), "-o", str(out / f"{stem}.trace.json"))
    run(out, "diff", "diff", str(rec), str(out / "replayed.jsonl"))
    assert files_holding(out, MARKER) == []
    # ... and the defences were exercised, not bypassed by a broken run.
    text = rec.read_text()
    assert text.count(REDACTED) >= len(CLIENT_COMMANDS)
    header = next(read_records(rec))
    assert any(REDACTED in a for a in header.qemu_argv) and "qmprr-redacted" in header.domain_xml
    assert (out / "stats-rec.out").stat().st_size > 0 and (out / "rec.html").stat().st_size > 0
    replay_report = json.loads((out / "replay-report.json").read_text())
    assert replay_report["counts"]["matched"] + replay_report["counts"]["diverged"] > 0


# -- properties ------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qmprr.recording.redact import Redactor, hmp_tokens, redact_argv  # noqa: E402

PASSWORDS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


def hmp_quote(text: str, bare: bool) -> str:
    """*text* as an HMP argument: bare when that reads back the same, else double-quoted."""
    if bare and text and not any(c in text for c in ' \t"\\') and not text.startswith('"'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(PASSWORDS, st.booleans(), st.sampled_from(["set_password vnc", "set_password spice", "change vnc password",
                                                   "change vnc passwd", "block_passwd drive0"]))
def test_hmp_password_token_is_redacted_however_quoted(password: str, bare: bool, prefix: str) -> None:
    line = f"{prefix} {hmp_quote(password, bare)}"
    assert hmp_tokens(line)[-1][2] == password  # the tokenizer reads it back as HMP would
    out = Redactor().redact(hmp(line))["arguments"]["command-line"]
    tokens = hmp_tokens(out)
    assert [t[2] for t in tokens] == prefix.split() + [REDACTED]


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=4, max_size=30), st.booleans())
def test_argv_secret_data_never_survives(data: str, json_form: bool) -> None:
    if json_form:
        spec = json.dumps({"qom-type": "secret", "id": "s0", "data": data})
    else:
        spec = "secret,id=s0,data=" + data.replace(",", ",,")
    argv, found, ids = redact_argv(["qemu-system-x86_64", "-object", spec])
    assert data in found and ids == {"s0"}
    assert argv[2].count(REDACTED) == 1
    assert ("data=" + REDACTED in argv[2]) or json.loads(argv[2])["data"] == REDACTED


@pytest.mark.parametrize("spec", [
    "{'qom-type':'secret','id':'s0','data':'%s'}",  # QEMU 7.2 reads single-quoted JSON
    '{"qom-type":"secret","id":"s0","data":"%s"',  # JSON qmprr cannot read: QEMU may, so all of it goes
    "{'qom-type':'secret',\t'id':'s0','data':'%s'}",
])
def test_json_object_in_any_spelling_qemu_reads_is_redacted(spec: str, tmp_path: Path) -> None:
    argv, found, _ = redact_argv(["qemu-system-x86_64", "-object", spec % MARKER])
    assert MARKER not in " ".join(argv) and any(MARKER in v for v in found)
    with RecordWriter.create(tmp_path / "rec.jsonl", sync="none") as log:
        log.append(Command(src="p", role="debug", msg=hmp("object_add " + spec % MARKER)))
    assert files_holding(tmp_path, MARKER) == []
