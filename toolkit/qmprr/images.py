"""Disk images a session names: find them, describe them (never their data), make blank ones.

An image description is a JSON object, as recordings keep it (header
``images``, ``note`` ``{"images": [...]}``; see ``recordings/README.md``)::

    {"path": "top.qcow2", "format": "qcow2", "virtual_size": 16777216, "cluster_size": 65536,
     "backing": [{"path": "base.qcow2", "format": "qcow2", "virtual_size": 16777216, "cluster_size": 65536}]}

``path`` is the image's name as the argv or the command gave it; a backing
layer's ``path`` is the backing file name written in the image above it
(relative names resolve in that image's folder), top first. Where it comes
from: ``qemu-img info --backing-chain --output=json -U`` at record time, or
the ``image`` objects of a recorded ``query-named-block-nodes`` /
``query-block`` reply. :func:`create` makes a blank image of the same format,
size, cluster size and chain with ``qemu-img create``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any

from . import qemuopts

#: Commands whose arguments name images to describe after they succeed.
IMAGE_COMMANDS = frozenset({"blockdev-add", "human-monitor-command"})
#: Longest time qemu-img info may take.
INFO_TIMEOUT = 5.0
#: Formats qemu-img can create a blank image of (protocol-level drivers are not images).
CREATABLE = frozenset({"qcow2", "raw", "qcow", "qed", "vmdk", "vdi", "vpc", "vhdx", "luks", "parallels"})
#: Formats whose images can have a backing file.
BACKING_FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk"})
#: Largest backing chain kept (a hostile image could claim any).
MAX_CHAIN = 16
#: Formats whose blank image writes metadata in proportion to its virtual size (a block map), and the
#: largest virtual size made blank of them: a recording claiming 1 PiB vdi disks would fill the disk
#: with gigabytes of block map each (qcow2, qed, raw, vhdx stay small whatever the size).
LINEAR_METADATA = frozenset({"vdi", "parallels", "qcow", "vmdk"})
MAX_LINEAR_SIZE = 2**40


def named_in_argv(argv: list[str]) -> list[str]:
    """Image files named by ``-drive file=``, ``-blockdev ...filename=`` (keyval or JSON), ``-hda`` … in *argv*."""
    out: list[str] = []
    for option, value in zip(argv, argv[1:]):
        if option.lstrip("-") in ("hda", "hdb", "hdc", "hdd", "cdrom") and option.startswith("-"):
            out.append(value)
        elif option in ("-drive", "--drive"):
            out += [i.value for i in qemuopts.parse(value) if i.key == "file" and not i.flag]
        elif option in ("-blockdev", "--blockdev"):
            if value.startswith("{"):
                try:
                    out += _filenames(json.loads(value))
                except ValueError:
                    continue
            else:
                out += [i.value for i in qemuopts.parse(value) if i.key and i.key.endswith("filename") and not i.flag]
    return _unique(p for p in out if _is_file_name(p))


def named_in_command(msg: dict[str, Any]) -> list[str]:
    """Image files a command opens: ``blockdev-add``'s ``filename`` members, HMP ``drive_add``'s ``file=``."""
    name, args = msg.get("execute"), msg.get("arguments")
    if not isinstance(args, dict):
        return []
    if name == "blockdev-add":
        return _unique(p for p in _filenames(args) if _is_file_name(p))
    line = args.get("command-line") if name == "human-monitor-command" else None
    if isinstance(line, str) and line.split(None, 1)[:1] == ["drive_add"]:
        parts = line.split(None, 2)
        if len(parts) == 3:
            return _unique(i.value for i in qemuopts.parse(parts[2]) if i.key == "file" and _is_file_name(i.value))
    return []


#: How QEMU opens a named image: its format (None: QEMU probes it) and whether it follows the image's backing file.
Opened = tuple[str, "str | None", bool]


def opened_in_command(msg: dict[str, Any]) -> list[Opened]:
    """The image files of :func:`named_in_command` as QEMU opens them (unknown formats left out).

    qemu-img must read an image no other way than QEMU does: a ``raw`` node
    whose data holds a qcow2 header (a guest can write one) probed as qcow2
    would make qemu-img follow a backing file QEMU never opens.
    """
    name, args = msg.get("execute"), msg.get("arguments")
    if not isinstance(args, dict):
        return []
    if name == "blockdev-add":
        return _opened_nodes(args)
    line = args.get("command-line") if name == "human-monitor-command" else None
    if isinstance(line, str) and line.split(None, 1)[:1] == ["drive_add"]:
        parts = line.split(None, 2)
        if len(parts) == 3:
            return _opened_drive(parts[2])
    return []


def opened_in_argv(argv: list[str]) -> list[Opened]:
    """The image files of :func:`named_in_argv` as QEMU opens them (unknown formats left out)."""
    out: list[Opened] = []
    for option, value in zip(argv, argv[1:]):
        if option.lstrip("-") in ("hda", "hdb", "hdc", "hdd", "cdrom") and option.startswith("-"):
            out.append((value, None, True))
        elif option in ("-drive", "--drive"):
            out += _opened_drive(value)
        elif option in ("-blockdev", "--blockdev"):
            try:
                node = json.loads(value) if value.startswith("{") else _keyval_tree(value)
            except ValueError:
                continue
            out += _opened_nodes(node) if isinstance(node, dict) else []
    return list({o[0]: o for o in reversed(out) if _is_file_name(o[0])}.values())[::-1]  # the first per name


def _opened_drive(opts: str) -> list[Opened]:
    items = [i for i in qemuopts.parse(opts) if i.key and not i.flag]
    fmt = next((i.value for i in items if i.key == "format"), None)
    if fmt is not None and fmt not in CREATABLE:
        return []
    chain = not any((i.key or "").startswith("backing") for i in items)
    return [(i.value, fmt, chain) for i in items if i.key == "file" and _is_file_name(i.value)][:1]


def _keyval_tree(opts: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in qemuopts.parse(opts):
        if not item.key or item.flag:
            continue
        *path, last = item.key.split(".")
        node = tree
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(item.key)
            node = child
        node[last] = item.value
    return tree


def _opened_nodes(node: Any, parent: dict[str, Any] | None = None, key: str = "", depth: int = 0) -> list[Opened]:
    """Protocol nodes (with a ``filename``) of a ``blockdev-add`` tree, each with its format node's driver."""
    if depth > 32:
        return []
    if isinstance(node, list):
        return [o for v in node for o in _opened_nodes(v, None, "", depth + 1)]
    if not isinstance(node, dict):
        return []
    out: list[Opened] = []
    name = node.get("filename")
    if isinstance(name, str) and _is_file_name(name):
        if parent is None:  # a protocol node on its own: QEMU reads its bytes, no format, no backing
            out.append((name, "raw", False))
        elif key == "file" and parent.get("driver") in CREATABLE:
            out.append((name, parent["driver"], "backing" not in parent))
    for k, value in node.items():
        if isinstance(value, (dict, list)):
            out += _opened_nodes(value, node if isinstance(value, dict) else None, k, depth + 1)
    return list(dict.fromkeys(out))


def _filenames(node: Any, depth: int = 0) -> list[str]:
    if depth > 32:
        return []
    if isinstance(node, dict):
        out = [node["filename"]] if isinstance(node.get("filename"), str) else []
        for key, value in node.items():
            if isinstance(value, (dict, list)) and key != "filename":
                out += _filenames(value, depth + 1)
        return out
    if isinstance(node, list):
        return [f for v in node for f in _filenames(v, depth + 1)]
    return []


def _is_file_name(path: str) -> bool:
    """A local file name (not ``nbd:``, ``json:``, a URL, a device, or empty)."""
    return bool(path) and ":" not in path.split("/", 1)[0] and not path.startswith("/dev/") and "\0" not in path


def _unique(paths: Any) -> list[str]:
    return list(dict.fromkeys(paths))


def _layer(info: dict[str, Any], path: str) -> dict[str, Any] | None:
    fmt, size = info.get("format"), info.get("virtual-size")
    if not isinstance(fmt, str) or type(size) is not int or size < 0:
        return None
    layer: dict[str, Any] = {"path": path, "format": fmt, "virtual_size": size}
    if type(info.get("cluster-size")) is int:
        layer["cluster_size"] = info["cluster-size"]
    return layer


def from_info(chain: Any, path: str) -> dict[str, Any] | None:
    """The description of *path* from ``qemu-img info --backing-chain --output=json`` (a list, top first)."""
    if isinstance(chain, dict):
        chain = [chain]
    if not isinstance(chain, list) or not chain or not all(isinstance(i, dict) for i in chain):
        return None
    top = _layer(chain[0], path)
    if top is None:
        return None
    backing = []
    for above, info in zip(chain, chain[1 : MAX_CHAIN + 1]):
        name = above.get("backing-filename")
        layer = _layer(info, name) if isinstance(name, str) and _is_file_name(name) else None
        if layer is None:
            break
        backing.append(layer)
    if backing:
        top["backing"] = backing
    return top


def from_block_nodes(reply: Any) -> list[dict[str, Any]]:
    """Descriptions from a ``query-named-block-nodes`` or ``query-block`` return (``image``, ``backing-image``)."""
    out: list[dict[str, Any]] = []
    nodes = reply if isinstance(reply, list) else []
    for node in nodes:
        if not isinstance(node, dict):
            continue
        image = node.get("image") if isinstance(node.get("image"), dict) else (node.get("inserted") or {}).get("image")
        if not isinstance(image, dict) or image.get("format") not in CREATABLE:
            continue
        chain = [image]
        while len(chain) <= MAX_CHAIN and isinstance(chain[-1].get("backing-image"), dict):
            chain.append(chain[-1]["backing-image"])
        name = image.get("filename")
        if isinstance(name, str) and _is_file_name(name):
            desc = from_info(chain, name)
            if desc is not None:
                out.append(desc)
    return out


def _info_argv(path: str, fmt: str | None = None, chain: bool = True) -> list[str] | None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        return None
    return [qemu_img, "info", *(["-f", fmt] if fmt else []), *(["--backing-chain"] if chain else []),
            "--output=json", "-U", "--", path]  # fmt: skip


def describe(path: str, cwd: str | None = None, fmt: str | None = None, chain: bool = True) -> dict[str, Any] | None:
    """*path* (relative to *cwd*) described with qemu-img, or None (no such image, no qemu-img).

    *fmt* is the format QEMU opens it as (None: probed, as QEMU does), *chain*
    whether QEMU follows its backing file: qemu-img never opens more than QEMU.
    """
    argv = _info_argv(os.path.join(cwd or ".", path), fmt, chain)
    if argv is None or not os.path.isfile(argv[-1]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, timeout=INFO_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _parse(done.returncode, done.stdout, path)


async def describe_async(
    path: str, cwd: str | None = None, fmt: str | None = None, chain: bool = True
) -> dict[str, Any] | None:
    """:func:`describe` without blocking the event loop."""
    argv = _info_argv(os.path.join(cwd or ".", path), fmt, chain)
    if argv is None or not os.path.isfile(argv[-1]):
        return None
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), INFO_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    return _parse(proc.returncode, out, path)


def _parse(code: int | None, out: bytes, path: str) -> dict[str, Any] | None:
    if code != 0:
        return None
    try:
        return from_info(json.loads(out), path)
    except ValueError:
        return None


def describe_all(opened: list[Opened], cwd: str | None = None) -> list[dict[str, Any]]:
    """Descriptions of those of the *opened* images (:func:`opened_in_argv`) qemu-img can read."""
    return [d for d in (describe(p, cwd, fmt, chain) for p, fmt, chain in opened) if d is not None]


def valid(desc: Any) -> bool:
    """Whether *desc* (from an untrusted recording) is a description :func:`create` may act on."""
    if not isinstance(desc, dict):
        return False
    layers = [desc, *(desc.get("backing") or [])] if isinstance(desc.get("backing") or [], list) else []
    return bool(layers) and len(layers) <= MAX_CHAIN + 1 and all(
        isinstance(x, dict) and x.get("format") in BACKING_FORMATS for x in layers[:-1]) and all(
        isinstance(x, dict) and isinstance(x.get("path"), str) and _is_file_name(x["path"])
        and x.get("format") in CREATABLE and type(x.get("virtual_size")) is int and 0 <= x["virtual_size"] < 2**63
        and (x.get("cluster_size") is None or (type(x["cluster_size"]) is int and 512 <= x["cluster_size"] <= 2**21))
        for x in layers
    )


class CreateError(Exception):
    """qemu-img could not create a scratch image."""


def create(desc: dict[str, Any], where: str, *, root: str) -> list[str]:
    """Blank images for *desc* (see :func:`valid`): its top at *where*, its backing chain beside it.

    Returns the files made, bottom first. A backing layer goes where its
    recorded name resolves from the image above, if that stays inside
    *root*; else under ``root/backing/`` (the overlay then names that file).
    No file is made outside *root*; an existing file is left as it is.
    """
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise CreateError("qemu-img not found (Debian: qemu-utils)")
    root = os.path.realpath(root)
    layers = [desc, *(desc.get("backing") or [])]
    for layer in layers:
        if layer["format"] in LINEAR_METADATA and layer["virtual_size"] > MAX_LINEAR_SIZE:
            raise CreateError(f"{layer['path']}: a blank {layer['format']} image of {layer['virtual_size']} bytes"
                              f" is refused (its metadata grows with its size; at most {MAX_LINEAR_SIZE})")
    files = [os.path.normpath(where)]
    for n, layer in enumerate(layers[1:], 1):
        path = os.path.normpath(os.path.join(os.path.dirname(files[-1]), layer["path"]))
        if not path.startswith(root + os.sep) or path in files or os.path.isdir(path):
            # out of the work folder, or a name that is a folder or another layer: a file of its own
            base = os.path.basename(layer["path"].rstrip("/")).lstrip(".") or "image"
            path = os.path.join(root, "backing", f"{n}-{base}")
        files.append(path)
    if not all(f.startswith(root + os.sep) and not os.path.isdir(f) for f in files):
        raise CreateError(f"{where}: not a file in the work folder")
    made = []
    for i in range(len(files) - 1, -1, -1):
        path, layer = files[i], layers[i]
        if os.path.lexists(path):
            continue
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise CreateError(f"{layer['path']}: cannot make its folder: {exc.strerror}") from None
        argv = [qemu_img, "create", "-q", "-f", layer["format"]]
        if layer.get("cluster_size") and layer["format"] in ("qcow2", "qed", "vhdx"):
            argv += ["-o", f"cluster_size={layer['cluster_size']}"]
        if i + 1 < len(files):
            below = os.path.relpath(files[i + 1], os.path.dirname(path))
            argv += ["-u", "-b", below, "-F", layers[i + 1]["format"]]
        argv += ["--", path, str(layer["virtual_size"])]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CreateError(f"qemu-img create {layer['path']}: {exc}") from None
        if done.returncode != 0:
            raise CreateError(f"qemu-img create {layer['path']}: {done.stderr.strip() or 'failed'}")
        made.append(path)
    return made


def summary(desc: dict[str, Any]) -> str:
    """``top.qcow2 (qcow2, 16 MiB, on base.qcow2)``."""
    size = desc["virtual_size"]
    text = f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size} bytes"
    backing = desc.get("backing") or []
    chain = f", on {' on '.join(b['path'] for b in backing)}" if backing else ""
    return f"{desc['path']} ({desc['format']}, {text}{chain})"
