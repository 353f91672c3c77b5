"""The one typed deploy request: stored and read back unchanged, secrets sealed apart, the configured
images as fallbacks, and no ``<role>_ref`` string lookups left in bmd."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bmd.config import DeploySettings
from bmd.drivers.deploy.refs import open_refs
from bmd.drivers.deploy.spec import ImageRef
from bmd.errors import InvalidInput
from bmd.provision.precheck import deploy_refs
from bmd.provision.request import DeployRequest
from bmd.secrets import SecretBox

FULL = DeployRequest(
    image_ref="http://images/disk.img",
    image_checksum="sha256:00",
    kernel_ref="/srv/k",
    kernel_checksum="md5:11",
    ramdisk_ref="/srv/r",
    ramdisk_checksum=None,
    root_mb=2048,
    swap_mb=512,
    name="web-1",
)


@pytest.mark.parametrize("request_", [FULL, DeployRequest("http://images/disk.img")], ids=["full", "minimal"])
def test_the_stored_form_reads_back_unchanged(request_: DeployRequest) -> None:
    assert DeployRequest.from_json(request_.to_json(), request_.image_ref) == request_


def test_refs_with_credentials_are_sealed_apart_and_put_back() -> None:
    box = SecretBox(Fernet.generate_key())
    secret = DeployRequest("https://user:pw@images/disk.img", kernel_ref="http://images/k?X-Amz-Signature=abc")
    stored, sealed = secret.sealed(box)
    assert sealed is not None and "pw" not in repr(stored.to_json()) and "pw" not in stored.image_ref
    assert stored.with_clear(open_refs(sealed, box)) == secret


def test_deploy_refs_fall_back_to_the_configured_images() -> None:
    deploy = DeploySettings(deploy_kernel="/d/k", deploy_ramdisk="/d/r", boot_kernel="/b/k", boot_ramdisk="/b/r")
    refs = deploy_refs(DeployRequest("/img", kernel_ref="/mine/k", kernel_checksum="md5:11"), deploy)
    assert refs == {
        "deploy_kernel": ImageRef("/d/k", None),
        "deploy_ramdisk": ImageRef("/d/r", None),
        "kernel": ImageRef("/mine/k", "md5:11"),
        "ramdisk": ImageRef("/b/r", None),
        "image": ImageRef("/img", None),
    }
    with pytest.raises(InvalidInput, match="ramdisk_ref: not given") as refused:
        deploy_refs(
            DeployRequest("/img"),
            DeploySettings(deploy_kernel="/d/k", deploy_ramdisk="/d/r", boot_kernel="/b/k", boot_ramdisk=""),
        )
    assert refused.value.field == "ramdisk_ref"


def test_no_role_ref_string_lookups_are_left() -> None:
    bmd = Path(__file__).resolve().parents[1] / "bmd"
    lookup = re.compile(r"""\.get\(f["'][^"']*_ref["']|\[f["'][^"']*_(ref|checksum)["']\]""")
    assert [str(p) for p in bmd.rglob("*.py") if lookup.search(p.read_text())] == []
