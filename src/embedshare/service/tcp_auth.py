"""The service's side of the TCP handshake (``client/handshake.py`` is the client's and the
proofs'): before a TCP peer's first request, both ends prove they hold the token, which never
crosses the wire. Nothing the peer sends is read before its proof but two small frames.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..client import handshake, protocol
from .metrics import ServiceMetrics

log = logging.getLogger("embedshare.service")


class TcpAuthenticator:
    """Runs the handshake with each new TCP peer, for the token of the listener's token file;
    counts every refusal in ``metrics`` (``auth_failures``) and logs it, never the token."""

    def __init__(self, token: bytes, metrics: ServiceMetrics) -> None:
        self.token = token
        self.metrics = metrics

    async def authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> bool:
        """The service's side of the handshake: True once the peer proved it holds the token.

        Nothing else is read before: its two frames are small, and any other first frame (a
        request, or an older client's hello carrying its token) is answered with an error.
        """
        request_id = 0
        try:
            message = await read_handshake_frame(reader)
            request_id = protocol.reply_id(message)
            request_id, op = protocol.check_request(message, ops=(handshake.AUTH_OP, *protocol.OPS))
            if op != handshake.AUTH_OP:
                raise self._refused(where, op)
            if message.get("handshake") != handshake.HANDSHAKE_VERSION:
                raise version_error(f"handshake version {message.get('handshake')!r}")
            client_nonce = message.get("nonce")
            if not handshake.is_nonce(client_nonce):
                raise protocol.ProtocolError("bad_request", f"field 'nonce' must be {handshake.NONCE_BYTES} bytes")
            service_nonce = handshake.new_nonce()
            writer.write(
                protocol.pack(
                    {
                        "id": request_id,
                        "ok": True,
                        "handshake": handshake.HANDSHAKE_VERSION,
                        "nonce": service_nonce,
                        "proof": handshake.proof(self.token, handshake.SERVICE, client_nonce, service_nonce),
                    }
                )
            )
            await writer.drain()
            message = await read_handshake_frame(reader)
            request_id = protocol.reply_id(message)
            request_id, op = protocol.check_request(message, ops=(handshake.AUTH_OP, *protocol.OPS))
            if op != handshake.AUTH_OP:  # a request before its proof: refused and counted, as a first one is
                raise self._refused(where, op)
            given = message.get("proof")
            if not handshake.proof_matches(self.token, handshake.CLIENT, client_nonce, service_nonce, given):
                raise self._refused(where, "wrong token")
        except protocol.ProtocolError as exc:
            self.metrics.add(requests=1, errors=1)
            reply = protocol.error_reply(request_id, exc.code, str(exc))
            if exc.code == "handshake":
                reply["handshake"] = handshake.HANDSHAKE_VERSION
            writer.write(protocol.pack(reply))
            await writer.drain()
            return False
        self.metrics.add(requests=1)
        writer.write(protocol.pack({"id": request_id, "ok": True}))
        await writer.drain()
        return True

    def _refused(self, where: str, what: str) -> protocol.ProtocolError:
        """Count and log a peer that failed the handshake; the error to answer it with."""
        self.metrics.add(auth_failures=1)
        if what == "hello":  # a client of before the handshake: it sent the token in the clear
            log.warning(
                "refused a TCP connection from %s: an older embedshare client sent the token in a "
                "hello, unencrypted; upgrade it, and change the token if the network is not trusted",
                where,
            )
            return version_error("a hello carrying the token")
        log.warning(
            "refused a TCP connection from %s: %s",
            where,
            what if what == "wrong token" else f"{what!r} before the handshake",
        )
        return protocol.ProtocolError(
            "unauthorized",
            "a TCP connection must start with the handshake that proves both ends hold the "
            "service's token (missing or wrong); connection closed",
        )


async def read_handshake_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One frame of a TCP peer that has not proved itself yet: small, or refused unread."""
    (length,) = protocol.HEADER.unpack(await reader.readexactly(protocol.HEADER.size))
    if length > handshake.MAX_FRAME:
        raise protocol.ProtocolError(
            "too_large", f"a handshake frame of {length} bytes; the handshake fits in {handshake.MAX_FRAME}"
        )
    return protocol.unpack(await reader.readexactly(length))


def version_error(what: str) -> protocol.ProtocolError:
    return protocol.ProtocolError(
        "handshake",
        f"{what} is not this service's TCP handshake (version {handshake.HANDSHAKE_VERSION}: a challenge "
        "and response that never sends the token): use the same embedshare version on both ends",
    )
