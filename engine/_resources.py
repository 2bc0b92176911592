"""Where the rule files and schemas are, installed or in a checkout.

An installed wheel carries them as ``engine/_bundled/rules`` and
``engine/_bundled/schemas`` (see ``force-include`` in pyproject.toml); an editable
install or a run from the checkout uses the repository's top-level ``rules/`` and
``schemas/``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "cart-cds"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    bundled = _PACKAGE_DIR / "_bundled" / name
    if bundled.is_dir():
        return bundled
    repo = _PACKAGE_DIR.parent
    checkout = repo / name
    # pyproject.toml marks a checkout: never pick up some unrelated top-level
    # `rules` package that happens to sit beside us in site-packages.
    if (repo / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"no {name!r} directory: looked for {str(bundled)!r} (installed package) "
        f"and {str(checkout)!r} (checkout); reinstall cart-cds or run from the repository"
    )


def rules_dir() -> Path:
    """The directory of the YAML rule files."""
    return _data_dir("rules")


def schemas_dir() -> Path:
    """The directory of the JSON Schemas."""
    return _data_dir("schemas")


def engine_version() -> str:
    """The installed version of cart-cds, or ``"0.0.0+local"`` when not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0.0.0+local"
