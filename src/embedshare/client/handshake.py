"""The TCP listener's handshake: both ends prove they hold the token; the token never crosses
the wire.

On the Unix socket the kernel vouches for the peer (``SO_PEERCRED``). On TCP anyone may listen
on the port once the service is gone, so the client must not send a text, nor believe a
vector or a path, before the peer proved it holds the token. Challenge and response, with
HMAC-SHA256 keyed by the token over fresh random nonces from both ends, bound to a context
string and to the direction (a proof made by one side is never valid for the other)::

    client  -> service  {"v": 1, "id": 0, "op": "auth", "handshake": 1, "nonce": Nc}
    service -> client   {"id": 0, "ok": true, "handshake": 1, "nonce": Ns,
                         "proof": HMAC(token, CONTEXT + b"service" + Nc + Ns)}
    client  -> service  {"v": 1, "id": 0, "op": "auth", "proof": HMAC(token, CONTEXT + b"client" + Nc + Ns)}
    service -> client   {"id": 0, "ok": true}

The client checks the service's proof before it sends its own or anything else; the service
checks the client's before it reads a request. Proofs are compared with
``hmac.compare_digest``. A peer that only replays old messages fails: the other end's nonce is
new. Without TLS a man in the middle can still relay a whole session (docs/reliability.md,
"TLS off the host"); what the handshake stops is an impostor on the port and a token on the wire.

``handshake`` versions the exchange: a service answers any other (or the old hello carrying
the token) with an error naming its own version, so neither end waits for the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeGuard

from ..errors import HandshakeError as HandshakeError  # `handshake.HandshakeError`
from .protocol import VERSION

HANDSHAKE_VERSION = 1
AUTH_OP = "auth"
NONCE_BYTES = 32
MAX_FRAME = 4096  # the largest frame either end reads before the other proved itself (~150 used)
CONTEXT = b"embedshare TCP handshake 1\x00"
SERVICE, CLIENT = "service", "client"  # whose proof


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def proof(token: bytes, role: str, client_nonce: bytes, service_nonce: bytes) -> bytes:
    """``role``'s proof that it holds ``token``, for this pair of nonces."""
    return hmac.new(token, CONTEXT + role.encode() + client_nonce + service_nonce, hashlib.sha256).digest()


def proof_matches(token: bytes, role: str, client_nonce: bytes, service_nonce: bytes, given: Any) -> bool:
    """Whether ``given`` (anything a peer sent) is ``role``'s proof, compared in constant time."""
    expected = proof(token, role, client_nonce, service_nonce)
    return isinstance(given, bytes) and hmac.compare_digest(given, expected)


def is_nonce(value: Any) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and len(value) == NONCE_BYTES


def client_handshake(
    token: bytes, send: Callable[[dict[str, Any]], None], receive: Callable[[], dict[str, Any]]
) -> None:
    """The client's side: returns once both ends proved themselves, else :class:`HandshakeError`.

    ``send`` frames and sends a message; ``receive`` reads the next one (their errors, a closed
    connection or a timeout, pass through).
    """
    client_nonce = new_nonce()
    send({"v": VERSION, "id": 0, "op": AUTH_OP, "handshake": HANDSHAKE_VERSION, "nonce": client_nonce})
    challenge = receive()
    _check_answer(challenge)
    service_nonce = challenge.get("nonce")
    if not is_nonce(service_nonce) or not proof_matches(
        token, SERVICE, client_nonce, service_nonce, challenge.get("proof")
    ):
        raise HandshakeError(
            "it did not prove it holds the token (it is not the embedshare service, or the token "
            "given here is not the one in the service's --token-file); nothing was sent to it"
        )
    send({"v": VERSION, "id": 0, "op": AUTH_OP, "proof": proof(token, CLIENT, client_nonce, service_nonce)})
    accepted = receive()
    if accepted.get("ok") is not True:
        raise HandshakeError("the service proved itself but refused this client's proof")


def _check_answer(reply: dict[str, Any]) -> None:
    """An error instead of a challenge: a service of another version, named by its version."""
    if reply.get("ok") is True:
        if reply.get("handshake") == HANDSHAKE_VERSION:
            return
        theirs = reply.get("handshake")
        raise HandshakeError(
            f"it answered with handshake version {_shown(theirs)}, this client speaks {HANDSHAKE_VERSION}"
        )
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if code == "unknown_op":
        raise HandshakeError(
            "it does not know the authenticated handshake (an embedshare older than this client?): "
            "upgrade the service, the token is never sent in the clear"
        )
    if code == "handshake":
        raise HandshakeError(
            f"it speaks handshake version {_shown(reply.get('handshake'))}, this client speaks {HANDSHAKE_VERSION}: "
            "use the same embedshare version on both ends"
        )
    raise HandshakeError(f"it answered the handshake with an error ({_shown(code)})")


def _shown(value: Any) -> str:
    """A peer's value in our message: a short int or word, never whatever it chose to send."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.isidentifier() and len(value) <= 32:
        return value
    return "?"
