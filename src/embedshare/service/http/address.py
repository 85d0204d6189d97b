"""The ``HOST:PORT`` of the service's HTTP endpoint, checked without importing the endpoint.

Kept apart from ``http.py`` (starlette, uvicorn) so that a process that only starts or
restarts a service (a pool worker whose service died, say) checks the option for free.
"""

from __future__ import annotations

import ipaddress
import os
from importlib.util import find_spec

from ...env import ENV_HTTP_TOKEN
from ...util.install import pip_install
from ..token_file import MIN_TOKEN_CHARS, read_token_file

DEFAULT_HOST = "127.0.0.1"
NEEDS = ("starlette", "uvicorn", "prometheus_client")  # the `http` extra


def parse_http_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` -> ``(host, port)``.

    The host defaults to loopback (127.0.0.1); port 0 picks a free port (the state file's
    ``http`` entry, or ``EmbeddingService.http_url``, gives the one chosen).
    """
    text = str(value).strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad HTTP address {value!r}: expected [IPv6]:PORT")
    elif text.count(":") <= 1:
        host, _, port_text = text.rpartition(":")
    else:
        raise ValueError(f"bad HTTP address {value!r}: write an IPv6 host in brackets, [::1]:8080")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad HTTP address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad HTTP address {value!r}: port {port} is not in 0..65535")
    return host or DEFAULT_HOST, port


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalise_http_address(address: str | None) -> str | None:
    """Check ``http=`` / ``--http`` where it is given (not in the service's log): the address,
    and that the packages of the ``http`` extra are installed. ``None`` stays ``None``."""
    if address is None:
        return None
    host, port = parse_http_address(address)
    missing = [name for name in NEEDS if find_spec(name) is None]
    if missing:
        raise ValueError(f"the HTTP endpoint needs {', '.join(missing)}: {pip_install('http')}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_token(token_file: str | None, no_auth: bool, loopback: bool, where: str, warn: bool = True) -> bytes | None:
    """The token HTTP clients must send, or None; raises ValueError on a setting that is unsafe.

    The launcher calls it too (``warn=False``), so a bad setting is one clear error at once,
    not a service that dies with it in its log. The token is never logged.
    """
    token = None
    if token_file:
        token = read_token_file(token_file)
    elif os.environ.get(ENV_HTTP_TOKEN):
        token = os.environ[ENV_HTTP_TOKEN].strip().encode()
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{ENV_HTTP_TOKEN} is too short: use at least {MIN_TOKEN_CHARS} characters")
    if token is not None and no_auth:
        raise ValueError("--http-no-auth and an HTTP token were both given; choose one")
    if token is None and not loopback:
        if not no_auth:
            raise ValueError(
                f"--http on {where} is reachable from other machines and needs a bearer token: "
                f"--http-token-file FILE (mode 0600) or {ENV_HTTP_TOKEN}; or pass --http-no-auth "
                "to serve without one"
            )
        if warn:
            import logging

            logging.getLogger("embedshare.service.http").warning(
                "the HTTP endpoint on %s serves anyone who can reach it: no token (--http-no-auth)", where
            )
    return token
