"""Packages are found, not listed: every folder with an ``__init__.py`` below a mapped folder.

``pyproject.toml``'s ``[tool.setuptools] package-dir`` maps the repository's folders onto
the ``labctl`` namespace (``services/`` is ``labctl.services``). setuptools' own discovery
cannot follow such a mapping, so this file walks each mapped folder; a new kind package
(``services/<kind>/``) is packaged without editing anything.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
PACKAGE_DIR: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
    "setuptools"
]["package-dir"]


def packages() -> list[str]:
    found = []
    for name, folder in PACKAGE_DIR.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(str(ROOT / folder))]
    return sorted(found)


setup(packages=packages())
