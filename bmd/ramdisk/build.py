"""``bmd ramdisk build``: the deploy kernel and ramdisk from Debian packages, nothing else downloaded.

1. resolve the kernel: the versioned ``linux-image-<version>-cloud-amd64`` that the metapackage
   ``linux-image-cloud-amd64`` depends on (``apt-cache depends``; ``--kernel-package`` picks another);
2. ``apt-get download`` it and ``busybox-static`` into ``<out>/.debs`` (kept: a rebuild with the same
   candidate versions downloads nothing), ``dpkg-deb -x`` each into a temporary tree;
3. ``depmod -b`` the kernel's modules, take the modules the agent needs (:data:`MODULES`, those this
   kernel has as modules) with their dependencies, dependencies first; compressed modules (``.ko.xz``,
   ``.ko.gz``, ``.ko.zst``) are decompressed so busybox ``insmod`` loads them;
4. the initramfs, a newc cpio (:mod:`bmd.ramdisk.cpio`) compressed with gzip -9: ``/init`` and the agent
   (``bmd/agent/``, under ``/usr/lib/bmd-agent``), busybox and its applet links, the modules under
   ``/lib/modules`` with their load order in ``/lib/bmd-modules.order``; ``tcpdump`` and the shared
   libraries it needs (:mod:`bmd.ramdisk.elfdeps`: read from its ELF files, their packages downloaded like
   the kernel's), the inspection collector's LLDP listener, unless ``lldp=False``;
5. ``deploy_kernel``, ``deploy_ramdisk`` and ``manifest.json`` (packages and versions, kernel version,
   modules, SHA-256 of both files, build time) written atomically into ``<out>``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from bmd.errors import BmdError
from bmd.ramdisk import KERNEL_NAME, MANIFEST_NAME, RAMDISK_NAME, cpio, elfdeps

DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# The LLDP listener of the inspection collector (bmd/agent/inspect.sh): busybox cannot capture frames.
LLDP_PACKAGE = "tcpdump"
LLDP_PROGRAM = "usr/bin/tcpdump"
# tcpdump looks its user up (-Z root): the ramdisk's only user.
PASSWD = b"root:x:0:0:root:/:/bin/sh\n"
GROUP = b"root:x:0:\n"
AGENT_LIB = "usr/lib/bmd-agent"
# What the agent needs: virtio (QEMU, clouds' bare metal) and common real-hardware disks and NICs. Those
# built into the kernel or missing from it are skipped (and listed in the manifest).
MODULES = (
    # virtio: disk, NIC, SCSI
    "virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk "
    "failover net_failover virtio_net virtio_scsi "
    # disks: SATA/AHCI, IDE (QEMU pc), NVMe, SAS RAID/HBA, SCSI disks
    "ahci ata_piix nvme sd_mod megaraid_sas mpt3sas "
    # NICs: Intel, Broadcom, Mellanox, Realtek, AWS ENA, VMware
    "e1000 e1000e igb ixgbe i40e ice tg3 bnxt_en mlx4_en mlx5_core r8169 ena vmxnet3"
).split()
APPLETS_FALLBACK = (
    "sh ash cat chmod cp cut date dd dmesg echo grep head hexdump ifconfig insmod ip kill ls mdev mkdir "
    "mknod mount poweroff printf reboot rm route sed seq sha256sum sha512sum md5sum sleep sync tail tee "
    "timeout tr true udhcpc uname wc wget awk blockdev sfdisk fdisk"
).split()


class RamdiskBuildError(BmdError):
    """A tool is missing, a package could not be downloaded, or the kernel package is not as expected."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    deb: Path


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    seconds: float
    downloaded: list[str] = field(default_factory=list)


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RamdiskBuildError(f"{name} is not installed (Debian package {package}): `bmd ramdisk build` needs it")
    return found


def _run(argv: Sequence[str], what: str, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise RamdiskBuildError(f"{what}: `{' '.join(argv)}` did not finish in {timeout:.0f} s") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RamdiskBuildError(f"{what}: `{' '.join(argv)}` failed ({done.returncode}): {' / '.join(tail)}")
    return done.stdout


def resolve_kernel_package(name: str) -> str:
    """The versioned kernel package a metapackage depends on (``linux-image-cloud-amd64`` →
    ``linux-image-6.1.0-57-cloud-amd64``); a versioned name is returned as it is."""
    out = _run([_tool("apt-cache", "apt"), "depends", name], f"resolving {name}")
    for line in out.splitlines():
        m = re.match(r"^\s*Depends:\s*(linux-image-[0-9]\S*)", line)
        if m:
            return m.group(1)
    if re.match(r"^linux-image-[0-9]", name):
        return name
    raise RamdiskBuildError(f"{name} depends on no versioned linux-image package (apt-cache depends {name})")


def build_key(kernel_package: str = DEFAULT_KERNEL_PACKAGE) -> str:
    """What a build's output depends on: the candidate package versions, the agent's files and this
    builder's code. Equal keys give equal ramdisks (a cache keyed by it is never stale)."""
    h = hashlib.sha256()
    kernel = resolve_kernel_package(kernel_package)
    for name in (kernel, BUSYBOX_PACKAGE, LLDP_PACKAGE):
        h.update(f"{name}={candidate_version(name)}\n".encode())
    for name, data in sorted(agent_files().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    for module in (__file__, cpio.__file__, elfdeps.__file__):
        h.update(Path(module).read_bytes())
    h.update(" ".join(MODULES).encode())
    return h.hexdigest()[:16]


def candidate_version(name: str) -> str:
    out = _run([_tool("apt-cache", "apt"), "policy", name], f"looking up {name}")
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m.group(1) == "(none)":
        raise RamdiskBuildError(f"no installable version of {name} is known to apt (run `apt-get update`)")
    return m.group(1)


def fetch_package(name: str, debs: Path, downloaded: list[str]) -> Package:
    """The package's .deb in ``debs``, downloaded with ``apt-get download`` unless already there."""
    version = candidate_version(name)
    pattern = f"{name}_{version.replace(':', '%3a')}_*.deb"  # as apt names the file
    found = sorted(debs.glob(pattern))
    if not found:
        debs.mkdir(parents=True, exist_ok=True)
        apt_get = _tool("apt-get", "apt")
        _run([apt_get, "download", f"{name}={version}"], f"downloading {name} {version} from the Debian archive", debs)
        downloaded.append(f"{name}={version}")
        found = sorted(debs.glob(pattern))
        if not found:
            raise RamdiskBuildError(f"apt-get download {name}={version} left no {pattern} in {debs}")
    return Package(name, version, found[-1])


def extract(pkg: Package, dest: Path) -> None:
    _run([_tool("dpkg-deb", "dpkg"), "-x", str(pkg.deb), str(dest)], f"unpacking {pkg.deb.name}")


def modules_root(tree: Path) -> tuple[Path, str]:
    """(``.../lib/modules/<version>``, version) in an unpacked kernel package (/lib or merged /usr/lib)."""
    for base in (tree / "lib" / "modules", tree / "usr" / "lib" / "modules"):
        versions = sorted(p for p in base.glob("*") if (p / "kernel").is_dir()) if base.is_dir() else []
        if versions:
            return versions[-1], versions[-1].name
    raise RamdiskBuildError(f"no lib/modules/<version>/kernel in the unpacked kernel package ({tree})")


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def read_modules_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """``{module name: (relative path, [dependency paths])}`` from ``modules.dep``."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[module_name(path)] = (path.strip(), rest.split())
    return deps


def load_order(wanted: Sequence[str], deps: dict[str, tuple[str, list[str]]]) -> list[str]:
    """The paths of ``wanted`` modules (those that exist) and their dependencies, dependencies first."""
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path, needs = deps[name]
        for dep in needs:
            visit(by_path.get(dep, module_name(dep)))
        order.append(path)

    for name in wanted:
        if name in deps:
            visit(name)
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed when the kernel package ships it compressed."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        zstd = _tool("zstd", "zstd")
        return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True, timeout=60).stdout
    return data


def busybox_applets(busybox: Path) -> list[str]:
    """The applets of the packaged busybox (it is static: it runs here); a fixed list if it cannot run."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return list(APPLETS_FALLBACK)
    return [a for a in out.stdout.split() if re.fullmatch(r"[a-z0-9_.\[-]+", a) and a != "busybox"]


def agent_files() -> dict[str, bytes]:
    """bmd's agent files (package data ``bmd/agent/``) by name."""
    root = files("bmd") / "agent"
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and not p.name.startswith(".")}


def lldp_closure(debs: Path, tmp: Path, downloaded: list[str]) -> elfdeps.Closure:
    """tcpdump and the shared libraries it needs (their packages downloaded like the kernel's)."""
    apt_cache = _tool("apt-cache", "apt")

    def unpack(name: str) -> tuple[Path, str]:
        pkg = fetch_package(name, debs, downloaded)
        tree = tmp / "lldp" / name
        tree.mkdir(parents=True)
        extract(pkg, tree)
        return tree, pkg.version

    def depends(name: str) -> list[str]:
        return elfdeps.parse_depends(_run([apt_cache, "depends", name], f"resolving {name}'s dependencies"))

    try:
        return elfdeps.program_closure(LLDP_PROGRAM, LLDP_PACKAGE, unpack, depends)
    except (elfdeps.ElfError, OSError) as err:
        raise RamdiskBuildError(f"{LLDP_PACKAGE} for the ramdisk: {err}") from err


def initramfs_entries(
    busybox: Path, modules: list[tuple[str, bytes]], manifest: dict[str, Any], extra: dict[str, bytes] | None = None
) -> list[cpio.Entry]:
    entries = [cpio.directory(d) for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib")]
    entries += [cpio.directory(d) for d in ("lib/modules", "usr", "usr/lib", AGENT_LIB, "usr/bin", "usr/sbin")]
    entries += [cpio.char_device("dev/console", 5, 1), cpio.char_device("dev/null", 1, 3, 0o666)]
    entries.append(cpio.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [cpio.symlink(f"bin/{a}", "busybox") for a in busybox_applets(busybox) if "/" not in a]
    agent = agent_files()
    if "init" not in agent or "bmd-agent.sh" not in agent:
        raise RamdiskBuildError("bmd's package data lacks bmd/agent/init or bmd/agent/bmd-agent.sh")
    entries.append(cpio.file("init", agent.pop("init"), 0o755))
    entries += [cpio.file(f"{AGENT_LIB}/{name}", data, 0o755) for name, data in sorted(agent.items())]
    made = {"lib/modules"}
    for rel, data in modules:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "lib/modules/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                entries.append(cpio.directory(d))
        entries.append(cpio.file(f"lib/modules/{rel}", data))
    order = "".join(f"{rel}\n" for rel, _ in modules)
    entries.append(cpio.file("lib/bmd-modules.order", order.encode()))
    entries.append(cpio.file("etc/bmd-ramdisk.json", json.dumps(manifest, indent=2, sort_keys=True).encode()))
    for rel, data in sorted((extra or {}).items()):  # programs and libraries (tcpdump's), executable
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made and d not in ("lib", "usr", "usr/bin", "usr/lib", "usr/sbin", "etc"):
                made.add(d)
                entries.append(cpio.directory(d))
        entries.append(cpio.file(rel, data, 0o755))
    if extra:
        entries += [cpio.file("etc/passwd", PASSWD), cpio.file("etc/group", GROUP)]
    return entries


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(
    out_dir: Path,
    kernel_package: str = DEFAULT_KERNEL_PACKAGE,
    modules: Sequence[str] = MODULES,
    debs_dir: Path | None = None,
    lldp: bool = True,
) -> BuildResult:
    """Build into ``out_dir`` (see the module docstring), the packages kept in ``debs_dir`` (default
    ``out_dir/.debs``). Blocking; RamdiskBuildError on any failure, and then nothing in ``out_dir`` was
    replaced. ``lldp``: include tcpdump and its libraries (the inspection collector's LLDP listener)."""
    started = time.monotonic()
    out_dir = Path(out_dir).resolve()
    debs = Path(debs_dir).resolve() if debs_dir is not None else out_dir / ".debs"
    downloaded: list[str] = []
    kernel_pkg = fetch_package(resolve_kernel_package(kernel_package), debs, downloaded)
    busybox_pkg = fetch_package(BUSYBOX_PACKAGE, debs, downloaded)
    with tempfile.TemporaryDirectory(prefix="bmd-ramdisk-") as tmp:
        ktree, btree = Path(tmp, "kernel"), Path(tmp, "busybox")
        extract(kernel_pkg, ktree)
        extract(busybox_pkg, btree)
        lldp_files = lldp_closure(debs, Path(tmp), downloaded) if lldp else elfdeps.Closure()
        moddir, version = modules_root(ktree)
        vmlinuz = next((p for p in (ktree / "boot").glob(f"vmlinuz-{version}")), None)
        if vmlinuz is None:
            raise RamdiskBuildError(f"{kernel_pkg.deb.name} has no boot/vmlinuz-{version}")
        if not (ktree / "lib" / "modules" / version).is_dir():  # merged /usr: depmod -b reads <base>/lib/modules
            (ktree / "lib").mkdir(exist_ok=True)
            (ktree / "lib" / "modules").symlink_to(moddir.parent)
        _run([_tool("depmod", "kmod"), "-b", str(ktree), version], "depmod")
        deps = read_modules_dep(moddir)
        order = load_order(modules, deps)
        loaded = {module_name(p) for p in order}
        builtin_text = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
        builtin = {module_name(line) for line in builtin_text.split()}
        payload = [(re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", rel), read_module(moddir / rel)) for rel in order]
        busybox = next((p for p in (btree / "bin" / "busybox", btree / "usr" / "bin" / "busybox") if p.is_file()), None)
        if busybox is None:
            raise RamdiskBuildError(f"{busybox_pkg.deb.name} has no bin/busybox")
        manifest: dict[str, Any] = {
            "packages": {
                "kernel": {"name": kernel_pkg.name, "version": kernel_pkg.version, "requested": kernel_package},
                "busybox": {"name": busybox_pkg.name, "version": busybox_pkg.version},
                **(
                    {
                        "lldp": {
                            "name": LLDP_PACKAGE,
                            "version": lldp_files.packages[LLDP_PACKAGE],
                            "with": dict(sorted(lldp_files.packages.items())),
                        }
                    }
                    if lldp
                    else {}
                ),
            },
            "lldp_files": {rel: len(data) for rel, data in sorted(lldp_files.files.items())},
            "kernel_version": version,
            "modules": [module_name(p) for p in order],
            "modules_builtin": sorted(m for m in modules if m in builtin),
            "modules_absent": sorted(m for m in modules if m not in loaded and m not in builtin),
            "agent": sorted(agent_files()),
        }
        raw = io.BytesIO()
        cpio.write_cpio(raw, initramfs_entries(busybox, payload, manifest, lldp_files.files))
        out_dir.mkdir(parents=True, exist_ok=True)
        kernel_tmp, ramdisk_tmp = out_dir / f".{KERNEL_NAME}.tmp", out_dir / f".{RAMDISK_NAME}.tmp"
        shutil.copyfile(vmlinuz, kernel_tmp)
        with open(ramdisk_tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(raw.getvalue())
    manifest["files"] = {
        KERNEL_NAME: {"sha256": _sha256(kernel_tmp), "size": kernel_tmp.stat().st_size},
        RAMDISK_NAME: {"sha256": _sha256(ramdisk_tmp), "size": ramdisk_tmp.stat().st_size},
    }
    manifest["built_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    manifest["build_seconds"] = round(time.monotonic() - started, 2)
    manifest_tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for staged in (kernel_tmp, ramdisk_tmp, manifest_tmp):  # served over TFTP/HTTP: 0644, not the umask's
        os.chmod(staged, 0o644)
    os.replace(kernel_tmp, out_dir / KERNEL_NAME)
    os.replace(ramdisk_tmp, out_dir / RAMDISK_NAME)
    os.replace(manifest_tmp, out_dir / MANIFEST_NAME)
    return BuildResult(out_dir, manifest, time.monotonic() - started, downloaded)
