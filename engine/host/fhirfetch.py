"""Fetching what a CDS Hooks call did not prefetch, from the EHR's FHIR server.

CDS Hooks 2.0: when the client sends no prefetch (or a prefetch key with `null`), a
service that needs the data queries `fhirServer` itself with the bearer token of
`fhirAuthorization`. `fetch_missing` does that for each prefetch template the call did
not fill: the template's `{{context.x}}` tokens are filled from the context, each query
is one GET with timeouts and a size limit, a searchset is followed through at most
`max_pages` `next` links, and no redirect is followed. Any R4 server answers these
queries (HAPI FHIR, the EHR's own; docs/service.md).

The service only fetches from servers it is told to trust (`cart-cds serve
--fhir-server URL`): `fhirServer` comes from the caller, and fetching from any URL a
caller names would let a caller make the service call other hosts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from engine.errors import BodyRefused
from engine.runtime.reading import DEFAULT_LIMITS, Limits, load_facts_bytes

__all__ = ["FetchResult", "fetch_missing", "fill_template", "server_allowed"]

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
MAX_PAGES = 5
_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z0-9_]+)\s*\}\}")


@dataclass
class FetchResult:
    """What was fetched (prefetch key -> resource or Bundle) and what could not be, why."""

    resources: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def server_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when `url` is (under) one of the `allowed` FHIR base URLs."""
    base = url.rstrip("/")
    return any(base == a.rstrip("/") or base.startswith(a.rstrip("/") + "/") for a in allowed)


def fill_template(template: str, context: Mapping[str, Any]) -> str | None:
    """A prefetch template with its `{{context.x}}` tokens filled (URL-quoted), or None
    when the context lacks one of them."""
    missing = False

    def token(match: re.Match[str]) -> str:
        nonlocal missing
        value = context.get(match.group(1))
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return quote(value, safe="/")

    filled = _TOKEN.sub(token, template)
    return None if missing else filled


def fetch_missing(
    server: str,
    access_token: str,
    templates: Mapping[str, str],
    context: Mapping[str, Any],
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_pages: int = MAX_PAGES,
    transport: httpx.BaseTransport | None = None,
) -> FetchResult:
    """Each template's query against `server`, with the bearer token."""
    result = FetchResult()
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    base = server.rstrip("/") + "/"
    with httpx.Client(
        timeout=timeout, headers=headers, follow_redirects=False, transport=transport
    ) as client:
        for key, template in templates.items():
            query = fill_template(template, context)
            if query is None:
                result.failures[key] = "the context lacks a value the template needs"
                continue
            try:
                result.resources[key] = _get(client, base + query, base, limits, max_pages)
            except _FetchError as exc:
                result.failures[key] = str(exc)
    return result


class _FetchError(Exception):
    pass


def _get(client: httpx.Client, url: str, base: str, limits: Limits, max_pages: int) -> Any:
    first = _json(client, url, limits)
    if not (isinstance(first, dict) and first.get("resourceType") == "Bundle"):
        return first
    entries = list(first.get("entry") or [])
    page, pages = first, 1
    while pages < max_pages:
        link = next(
            (
                item.get("url")
                for item in page.get("link") or []
                if isinstance(item, dict) and item.get("relation") == "next"
            ),
            None,
        )
        if not isinstance(link, str) or not link.startswith(base):
            break  # no next page, or one on another server: not followed
        page = _json(client, link, limits)
        if not isinstance(page, dict):
            break
        entries.extend(page.get("entry") or [])
        pages += 1
    return {**first, "entry": entries}


def _json(client: httpx.Client, url: str, limits: Limits) -> Any:
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _FetchError(f"the FHIR server answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > limits.max_bytes:
                    raise _FetchError(f"the answer is over {limits.max_bytes} bytes")
    except httpx.TimeoutException:
        raise _FetchError("the FHIR server did not answer in time") from None
    except httpx.HTTPError as exc:
        raise _FetchError(f"cannot reach the FHIR server ({type(exc).__name__})") from None
    try:
        items = load_facts_bytes(bytes(body), limits)
    except BodyRefused as exc:
        raise _FetchError(f"the answer is not usable JSON: {exc.message}") from None
    if len(items) != 1:
        raise _FetchError("the answer is not one JSON object")
    return items[0]
