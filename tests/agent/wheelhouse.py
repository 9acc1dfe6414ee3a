"""A wheelhouse for requirements-agent.txt without a network: the wheels `make venv` built
(`pip wheel`, .venv/wheelhouse-agent), or else wheels packed again from the distributions
this interpreter has installed, with their own files, metadata and tags.

A distribution's RECORD lists every file its wheel installed under site-packages; those
files and its .dist-info are exactly what the wheel held, less the scripts pip generated
(rebuilt from entry_points.txt on install). Only what requirements-agent.txt needs is
packed: its requirements and theirs, markers evaluated for this interpreter.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import re
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Written by the installer, not part of the wheel.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


class WheelhouseError(Exception):
    """The wheelhouse cannot be made; the message says why."""


def requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(Requirement(line))
    return out


def closure(reqs: list[Requirement]) -> list[md.Distribution]:
    """The installed distributions that satisfy `reqs` and everything they require."""
    seen: dict[str, md.Distribution] = {}
    todo = list(reqs)
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise WheelhouseError(f"{req.name} is not installed in {Path(md.__file__).parent}") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise WheelhouseError(f"{req} is wanted; {dist.metadata['Name']} {dist.version} is installed")
        seen[name] = dist
        todo.extend(Requirement(r) for r in dist.requires or ())
    return list(seen.values())


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(dist: md.Distribution, out_dir: Path) -> Path:
    """One installed distribution as a wheel file in out_dir."""
    name = dist.metadata["Name"]
    files = dist.files
    if not files:
        raise WheelhouseError(f"{name} has no RECORD (not installed from a wheel): it cannot be packed again")
    info_dirs = {f.parts[0] for f in files if len(f.parts) == 2 and f.parts[0].endswith(".dist-info") and f.name == "METADATA"}
    if len(info_dirs) != 1:
        raise WheelhouseError(f"{name}: cannot tell its .dist-info directory from its RECORD")
    info = info_dirs.pop()
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise WheelhouseError(f"{name}: its WHEEL file names no tag")
    py, abi, plat = (".".join(sorted({t.split("-")[i] for t in tags})) for i in range(3))
    escaped = re.sub(r"[-_.]+", "_", name)
    target = out_dir / f"{escaped}-{dist.version.replace('-', '_')}-{py}-{abi}-{plat}.whl"
    root = Path(dist.locate_file(""))
    record = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as whl:
        for f in files:
            arc = f.as_posix()
            if arc.startswith("..") or "__pycache__" in f.parts or (f.parts[0] == info and f.name in INSTALLER_FILES):
                continue
            data = (root / f).read_bytes()
            whl.writestr(arc, data)
            record.append(f"{arc},{_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


def build_from_installed(requirements_file: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [repack(dist, out_dir) for dist in closure(requirements(requirements_file))]
