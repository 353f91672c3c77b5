"""Boot file templates: pxelinux configs and iPXE scripts, rendered with ``string.Template``.

The templates use ``@name`` placeholders, not ``$name``: iPXE scripts are full of ``${mac}``-style
variables of their own. Values are checked by the caller (no whitespace, no quotes, no ``$``), so a value
can never add a line or a directive to the file it lands in.

Both formats get two renderings per deploy: *deploy mode* (``default deploy`` / ``goto deploy``, both
labels) and *boot mode* (``default boot`` / ``goto boot``, the boot label only), which ``switch_to_boot``
puts in place once the deploy is done.

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


@dataclass(frozen=True, slots=True)
class BootParams:
    """Everything the templates need; values are already validated (single tokens)."""

    node_uuid: str
    deploy_args: str
    boot_args: str
    node_url: str  # http_url/<node_uuid>


def kernel_args(pairs: dict[str, str | int], extra: str = "") -> str:
    return " ".join([*(f"{k}={v}" for k, v in pairs.items()), *extra.split()])


def pxe_config(p: BootParams, deploy: bool) -> str:
    text = _PXE_HEADER.substitute(node_uuid=p.node_uuid, default="deploy" if deploy else "boot")
    if deploy:
        text += _PXE_DEPLOY.substitute(node_uuid=p.node_uuid, args=p.deploy_args)
    return text + _PXE_BOOT.substitute(node_uuid=p.node_uuid, args=p.boot_args)


def ipxe_script(p: BootParams, deploy: bool) -> str:
    text = _IPXE_HEADER.substitute(node_uuid=p.node_uuid, default="deploy" if deploy else "boot")
    if deploy:
        text += _IPXE_DEPLOY.substitute(base=p.node_url, args=p.deploy_args)
    return text + _IPXE_BOOT.substitute(base=p.node_url, args=p.boot_args) + _IPXE_FOOTER


def ipxe_chain(http_url: str) -> str:
    return _IPXE_CHAIN.substitute(http_url=http_url)
