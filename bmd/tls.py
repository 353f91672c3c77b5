"""TLS for the API: the server's context from ``api.tls_cert``/``api.tls_key``, a client's from
``api.tls_ca`` (the CLI, the lab's enrolment). Errors are ConfigErrors naming the key and the file."""

from __future__ import annotations

import ssl

from bmd.config import ApiSettings
from bmd.errors import ConfigError


def server_context(api: ApiSettings) -> ssl.SSLContext | None:
    """None when TLS is off (both keys empty: the config check makes it both or neither)."""
    if not api.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(api.tls_cert, api.tls_key)
    except FileNotFoundError as err:
        key = "api.tls_cert" if err.filename in (None, api.tls_cert) else "api.tls_key"
        raise ConfigError(f"{key}: {err.filename or api.tls_cert} does not exist") from err
    except PermissionError as err:
        raise ConfigError(f"api.tls_cert/api.tls_key: cannot read {err.filename}: permission denied") from err
    except ssl.SSLError as err:
        raise ConfigError(
            f"api.tls_cert/api.tls_key: {api.tls_cert} and {api.tls_key} are not a PEM certificate and its "
            f"private key ({err.reason or err})"
        ) from err
    return context


def client_context(api: ApiSettings) -> ssl.SSLContext:
    """Trusts ``api.tls_ca`` when set (a private CA or the server's self-signed certificate), else the
    system's CAs; the host name is always checked."""
    try:
        return ssl.create_default_context(cafile=api.tls_ca or None)
    except FileNotFoundError as err:
        raise ConfigError(f"api.tls_ca: {api.tls_ca} does not exist") from err
    except ssl.SSLError as err:
        raise ConfigError(f"api.tls_ca: {api.tls_ca} holds no PEM certificate ({err.reason or err})") from err
