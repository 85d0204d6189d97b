"""The address of the service's optional TCP listener: ``tcp://HOST:PORT``, read by clients and
by the service alike (the Unix socket's address is a path)."""

from __future__ import annotations

from .. import settings

TCP_SCHEME = "tcp://"


def parse_tcp_address(spec: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or ``tcp://HOST:PORT`` -> ``(host, port)``.

    A bare port means loopback (127.0.0.1): listening on another interface must be asked for.
    """
    spec = str(spec)
    text = spec[len(TCP_SCHEME) :] if spec.startswith(TCP_SCHEME) else spec
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise settings.SettingError(f"bad TCP address {spec!r}: expected HOST:PORT or PORT") from None
    if not 0 <= number <= 65535:
        raise settings.SettingError(f"bad TCP address {spec!r}: port {number} is not in 0..65535")
    return host, number
