"""Small pieces shared by the HTML pages the tools write (coverage, the rule catalogue).

Every string that reaches a page goes through `e`. Pages carry a Content-Security-Policy
that allows no script at all and styles only from where the page says: an external file
(`'self'`) or one inline block named by its sha256 (never `unsafe-inline`).
"""

from __future__ import annotations

import base64
import hashlib
import html


def e(value: object) -> str:
    """Escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def csp(style_src: str) -> str:
    return (
        "default-src 'none'; script-src 'none'; object-src 'none'; base-uri 'none'; "
        f"form-action 'none'; img-src 'none'; style-src {style_src}"
    )


def style_hash(css: str) -> str:
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def page(title: str, body: str, *, css: str | None = None, stylesheet: str | None = None) -> str:
    """A complete page: an inline `css` block (allowed by its hash), or a `stylesheet` link."""
    if css is not None:
        head = f"<style>{css}</style>"
        policy = csp(style_hash(css))
    else:
        head = f'<link rel="stylesheet" href="{e(stylesheet or "style.css")}">'
        policy = csp("'self'")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(policy)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
{head}
</head>
<body>
{body}
</body>
</html>
"""
