"""Checks shared by the tests of the HTML pages the tools write, in a real browser."""

from __future__ import annotations

import re
from typing import Any


def load_cleanly(browser: Any, url: str) -> None:
    """Open `url`; assert the page logged no error and fetched nothing but local files."""
    browser.get(url)
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], f"{url}: {errors}"
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(performance.getEntriesByType('navigation').map(e => e.name))"
    )
    assert urls and all(u.startswith("file:") for u in urls), urls


def csp_of(page: str) -> str:
    found = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert found, "no Content-Security-Policy meta tag"
    policy = found.group(1).replace("&#x27;", "'")
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "default-src 'none'" in policy and "script-src 'none'" in policy
    return policy
