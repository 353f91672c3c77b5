"""The one redaction of image refs (display_ref), URLs scrubbed out of free text, and sealed refs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmd.drivers.deploy.refs import display_ref, has_secret, open_refs, scrub_urls, seal_refs
from bmd.errors import BmdError
from bmd.secrets import load_secret_box


@pytest.mark.parametrize(
    ("ref", "shown"),
    [
        ("http://u:p@host/x?sig=1", "http://***@host/x?<redacted>"),
        ("https://user@host:8443/a/b.img", "https://***@host:8443/a/b.img"),
        ("http://host/x?X-Amz-Signature=abc&X-Amz-Expires=60", "http://host/x?<redacted>"),
        ("http://host/x#frag", "http://host/x"),
        ("http://u:p@[fd00::1]:8080/x?s=1", "http://***@[fd00::1]:8080/x?<redacted>"),
        ("http://host/plain.img", "http://host/plain.img"),
        ("http://host:8080/plain.img", "http://host:8080/plain.img"),
        ("/srv/images/disk.img", "/srv/images/disk.img"),
        ("file:///srv/images/disk.img", "file:///srv/images/disk.img"),
        ("ftp://u:p@host/x", "ftp://***@host/x"),
        ("http://u:se?cret@host/x", "http://***"),  # an unescaped '?' in a password
        ("http://u:se/cret@host/x", "http://***"),  # an unescaped '/': the "port" is not one
        ("http://[fd00::1/x?s=1", "<unparseable URL redacted>"),
        ("http://***@host/x?<redacted>", "http://***@host/x?<redacted>"),  # idempotent
    ],
)
def test_display_ref(ref: str, shown: str) -> None:
    assert display_ref(ref) == shown
    assert has_secret(ref) == (shown != ref)


def test_scrub_urls_in_free_text() -> None:
    text = (
        "GET URL('http://u:hunter2@10.0.0.1/x?sig=s3cr3t') failed; "
        'redirect to "https://cdn/y?token=t0k" and http://plain/z stays'
    )
    scrubbed = scrub_urls(text)
    assert "hunter2" not in scrubbed and "s3cr3t" not in scrubbed and "t0k" not in scrubbed
    assert "URL('http://***@10.0.0.1/x?<redacted>')" in scrubbed
    assert '"https://cdn/y?<redacted>"' in scrubbed and "http://plain/z stays" in scrubbed
    assert scrub_urls(scrubbed) == scrubbed
    assert scrub_urls("no url here: a/b?c") == "no url here: a/b?c"


def test_seal_and_open_refs(tmp_path: Path) -> None:
    box = load_secret_box(tmp_path / "key")
    refs = {"image_ref": "http://u:p@h/disk?sig=1", "kernel_ref": "http://h/kernel", "ramdisk_ref": None}
    shown, sealed = seal_refs(refs, box)
    assert shown == {"image_ref": "http://***@h/disk?<redacted>", "kernel_ref": "http://h/kernel", "ramdisk_ref": None}
    assert sealed is not None and sealed.startswith("fernet:") and "sig=1" not in sealed
    assert open_refs(sealed, box) == {"image_ref": "http://u:p@h/disk?sig=1"}
    assert seal_refs({"image_ref": "/srv/disk.img"}, box) == ({"image_ref": "/srv/disk.img"}, None)
    assert open_refs(None, box) == {}
    with pytest.raises(BmdError, match="JSON object"):
        open_refs(box.encrypt('["not", "a", "mapping"]'), box)
    with pytest.raises(BmdError, match="cannot be decrypted"):
        open_refs(load_secret_box(tmp_path / "other-key").encrypt("{}"), box)
