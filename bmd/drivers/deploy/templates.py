"""Boot file templates: pxelinux configs and iPXE scripts, rendered with ``string.Template``.

The templates use ``@name`` placeholders, not ``$name``: iPXE scripts are full of ``${mac}``-style
variables of their own. Values are checked by the caller (no whitespace, no quotes, no ``$``), so a value
can never add a line or a directive to the file it lands in.

All formats (pxelinux, iPXE, GRUB) get two renderings per deploy: *deploy mode* (``default deploy`` /
``goto deploy`` / ``set default=deploy``, both labels) and *boot mode* (the boot label only), which
``switch_to_boot`` puts in place once the deploy is done.

The boot label boots the instance: a *partition image* with its own kernel and ramdisk is netbooted
(``root=`` on the command line); a *whole-disk image* (no kernel, no ramdisk) boots from the local disk:
pxelinux ``LOCALBOOT 0``, iPXE ``exit`` (back to the firmware, which tries its next boot device), GRUB
``exit`` likewise. iPXE scripts serve BIOS and UEFI alike (DHCP picks undionly.kpxe or snponly.efi);
pxelinux is BIOS only; the GRUB config is for UEFI nodes netbooting GRUB (``grub/grub.cfg-01-<mac>``).

Nothing in these files is secret: TFTP and HTTP boot are unauthenticated, so the deploy label's kernel
args carry only the node's identity (``bmd_node_uuid``; iPXE adds ``BOOTIF``, pxelinux's ``ipappend 3``
too) and bmd's base URL (``bmd_url``). The agent gets everything else, with its token, from the lookup
(see :mod:`bmd.drivers.deploy.agent_sim`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# Kernel arguments of the deploy label: all the deploy ramdisk starts with (nothing secret).
ARG_NODE_UUID = "bmd_node_uuid"
ARG_BMD_URL = "bmd_url"

# File names inside a node's directory.
DEPLOY_KERNEL = "deploy_kernel"
DEPLOY_RAMDISK = "deploy_ramdisk"
KERNEL = "kernel"
RAMDISK = "ramdisk"
DISK_IMAGE = "disk"
PXE_CONFIG = "config"
IPXE_SCRIPT = "boot.ipxe"
GRUB_CONFIG = "grub.cfg"
CONFIG_DRIVE = "configdrive.iso"


class _Template(string.Template):
    delimiter = "@"


_PXE_HEADER = _Template("""\
# Written by bmd for node @node_uuid. Do not edit: bmd rewrites it.
default @default
prompt 0
timeout 0
""")

_PXE_DEPLOY = _Template("""
label deploy
kernel @node_uuid/deploy_kernel
append initrd=@node_uuid/deploy_ramdisk @args
ipappend 3
""")

_PXE_BOOT = _Template("""
label boot
kernel @node_uuid/kernel
append initrd=@node_uuid/ramdisk @args
""")

_PXE_LOCALBOOT = _Template("""
label boot
LOCALBOOT 0
""")

_IPXE_HEADER = _Template("""\
#!ipxe
# Written by bmd for node @node_uuid. Do not edit: bmd rewrites it.
goto @default
""")

_IPXE_DEPLOY = _Template("""
:deploy
kernel @base/deploy_kernel initrd=deploy_ramdisk @args BOOTIF=01-${mac:hexhyp}
initrd @base/deploy_ramdisk
boot || goto failed
""")

_IPXE_BOOT = _Template("""
:boot
kernel @base/kernel initrd=ramdisk @args
initrd @base/ramdisk
boot || goto failed
""")

_IPXE_LOCALBOOT = """
:boot
echo bmd: whole-disk image, booting from the local disk
exit
"""

_IPXE_FOOTER = """
:failed
echo bmd: boot failed, retrying in 10 seconds
sleep 10
reboot
"""

_IPXE_CHAIN = _Template("""\
#!ipxe
# Written by bmd. Point DHCP at this script: it chains to the script of the interface that booted.
chain @http_url/ipxe/01-${mac:hexhyp}.ipxe || goto no_config

:no_config
echo bmd: no boot script for ${mac}, booting from the next device
exit
""")


_GRUB_HEADER = _Template("""\
# Written by bmd for node @node_uuid. Do not edit: bmd rewrites it.
set default=@default
set timeout=0
""")

_GRUB_BOOTIF = _Template("""\
if [ "$net_default_mac" = "@mac" ]; then set bootif=01-@dashed; fi
""")

_GRUB_DEPLOY = _Template("""
menuentry "deploy" --id deploy {
    linux /@node_uuid/deploy_kernel @args BOOTIF=$bootif
    initrd /@node_uuid/deploy_ramdisk
}
""")

_GRUB_BOOT = _Template("""
menuentry "boot" --id boot {
    linux /@node_uuid/kernel @args
    initrd /@node_uuid/ramdisk
}
""")

_GRUB_LOCALBOOT = """
menuentry "boot" --id boot {
    exit
}
"""


@dataclass(frozen=True, slots=True)
class BootParams:
    """Everything the templates need; values are already validated (single tokens)."""

    node_uuid: str
    deploy_args: str
    boot_args: str
    node_url: str  # http_url/<node_uuid>
    whole_disk: bool = False  # no instance kernel/ramdisk: the boot label boots the local disk
    macs: tuple[str, ...] = ()  # normalized (aa:bb:...): GRUB maps the MAC it booted from to BOOTIF


def kernel_args(pairs: dict[str, str | int], extra: str = "") -> str:
    return " ".join([*(f"{k}={v}" for k, v in pairs.items()), *extra.split()])


def pxe_config(p: BootParams, deploy: bool) -> str:
    text = _PXE_HEADER.substitute(node_uuid=p.node_uuid, default="deploy" if deploy else "boot")
    if deploy:
        text += _PXE_DEPLOY.substitute(node_uuid=p.node_uuid, args=p.deploy_args)
    if p.whole_disk:
        return text + _PXE_LOCALBOOT.substitute()
    return text + _PXE_BOOT.substitute(node_uuid=p.node_uuid, args=p.boot_args)


def ipxe_script(p: BootParams, deploy: bool) -> str:
    text = _IPXE_HEADER.substitute(node_uuid=p.node_uuid, default="deploy" if deploy else "boot")
    if deploy:
        text += _IPXE_DEPLOY.substitute(base=p.node_url, args=p.deploy_args)
    boot = _IPXE_LOCALBOOT if p.whole_disk else _IPXE_BOOT.substitute(base=p.node_url, args=p.boot_args)
    return text + boot + _IPXE_FOOTER


def grub_config(p: BootParams, deploy: bool) -> str:
    """GRUB (UEFI netboot) config; paths are relative to the TFTP root GRUB was loaded from. GRUB names the
    MAC it booted from ``$net_default_mac`` (with colons): one ``if`` per node MAC turns it into the
    ``BOOTIF=01-aa-bb-...`` form the agent reads."""
    text = _GRUB_HEADER.substitute(node_uuid=p.node_uuid, default="deploy" if deploy else "boot")
    if deploy:
        text += "".join(_GRUB_BOOTIF.substitute(mac=m, dashed=m.replace(":", "-")) for m in p.macs)
        text += _GRUB_DEPLOY.substitute(node_uuid=p.node_uuid, args=p.deploy_args)
    if p.whole_disk:
        return text + _GRUB_LOCALBOOT
    return text + _GRUB_BOOT.substitute(node_uuid=p.node_uuid, args=p.boot_args)


def ipxe_chain(http_url: str) -> str:
    return _IPXE_CHAIN.substitute(http_url=http_url)
