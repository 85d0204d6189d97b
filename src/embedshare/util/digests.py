"""Hash functions without OpenSSL.

``hashlib`` maps OpenSSL's libcrypto into the process (~1.2 MB of PSS in every worker); the
builtin ``_blake2`` and ``_sha256`` modules give the same digests for a few KB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typeshed has no stubs for the builtin modules: the types are hashlib's
    from hashlib import blake2b, sha256
else:
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - CPython always has it
        from hashlib import blake2b

    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # pragma: no cover
        try:
            from _sha2 import sha256  # Python 3.12+
        except ImportError:
            from hashlib import sha256

__all__ = ["blake2b", "sha256"]
