"""The version has one source: the Cargo workspace's ``[workspace.package] version``.

maturin copies it into the wheel's metadata (pyproject.toml lists ``version`` as dynamic) and
the extension module compiles it in as ``ferroloop.__version__`` (``CARGO_PKG_VERSION``).
"""

import importlib.metadata
import os
import re

import ferroloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def toml_section(text, name):
    """The body of ``[name]`` in a TOML file (enough for flat sections; 3.10 has no tomllib)."""
    m = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert m, f"no [{name}] section"
    return m.group(1)


def cargo_workspace_version():
    section = toml_section(read("Cargo.toml"), "workspace.package")
    m = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    assert m, "no version in Cargo.toml's [workspace.package]"
    return m.group(1)


def test_installed_version_is_the_cargo_workspace_version():
    version = cargo_workspace_version()
    assert ferroloop.__version__ == version
    assert importlib.metadata.version("ferroloop") == version


def test_version_is_written_only_in_the_cargo_workspace():
    for crate in ("ferroloop-py", "ferroloop-core"):
        package = toml_section(read("crates", crate, "Cargo.toml"), "package")
        assert re.search(r"^version\.workspace\s*=\s*true", package, re.M), crate
    project = toml_section(read("pyproject.toml"), "project")
    assert not re.search(r"^version\s*=", project, re.M)
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M)
