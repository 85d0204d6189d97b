"""The pip command that adds an extra to *this* installation of embedshare.

embedshare is not on the package index, so ``pip install 'embedshare[http]'`` fails for
everyone who installed it from a checkout. pip records where a package came from in its
``direct_url.json`` (PEP 610): an editable checkout gets ``pip install -e '<checkout>[http]'``,
a local folder or wheel ``pip install '<path>[http]'``, a git or archive URL ``pip install
'embedshare[http] @ <url>'``, and only an index install gets the plain name.
"""

from __future__ import annotations

import json
from functools import cache
from urllib.parse import unquote, urlparse


@cache
def _origin() -> tuple[str, str] | None:
    """``(kind, where)`` from pip's record of this installation, or None (an index install)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        record = distribution("embedshare").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not record:
        return None
    try:
        origin = json.loads(record)
    except ValueError:
        return None
    url = str(origin.get("url", ""))
    if "vcs_info" in origin:
        return "url", f"{origin['vcs_info'].get('vcs', 'git')}+{url}"
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return ("url", url) if url else None  # a wheel or sdist from a URL
    if origin.get("dir_info", {}).get("editable"):
        return "editable", unquote(parsed.path)
    return "path", unquote(parsed.path)  # a folder, or a wheel or sdist file


def pip_install(extra: str) -> str:
    """``pip install ...`` that adds ``extra`` (``http``, ``local``, ...) to this embedshare."""
    origin = _origin()
    if origin is None:
        return f"pip install 'embedshare[{extra}]'"
    kind, where = origin
    if kind == "editable":
        return f"pip install -e '{where}[{extra}]'"
    if kind == "path":
        return f"pip install '{where}[{extra}]'"
    return f"pip install 'embedshare[{extra}] @ {where}'"
