"""Client authentication as CDS Hooks 2.0 specifies: a JWT bearer token signed by the client.

Checked on every protected call, in this order, each failure with its own message:
the `Authorization: Bearer` header; the header's `alg` (asymmetric only: RSA, RSA-PSS,
ECDSA, EdDSA; `none` and every HMAC algorithm refused); the `kid` among the keys of the
configured JWK Set (a file, or a URL fetched again when an unknown `kid` arrives, at most
once a minute); the signature; `iss` in the allow-list; `aud` equal to the exact URL
being called; `exp` (and `iat`, `nbf`) with a small leeway, each a JSON number (a
NumericDate: the string "9999999999" is refused); a lifetime (`exp` - `iat`) of at most
`max_lifetime` (CDS Hooks: the token should expire within 5 minutes; `cart-cds serve
--max-token-lifetime`); `jti` not seen before while the token is valid (replays
refused). A `jku` header is ignored: keys come only from the configured set.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_LIFETIME_S",
    "AuthError",
    "Client",
    "KeySet",
    "ReplayCache",
    "Verifier",
]

log = logging.getLogger("cart_cds.auth")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
REALM = "cart-cds"
LEEWAY_S = 30.0
MAX_LIFETIME_S = 300.0  # CDS Hooks 2.0: the JWT should expire within 5 minutes
REFETCH_AFTER_S = 60.0
MAX_JWKS_BYTES = 1_000_000


class AuthError(Exception):
    """A call refused with 401; `message` names the problem."""

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.message = message
        self.error = error  # RFC 6750 error code; None when no token was sent at all

    def www_authenticate(self) -> str:
        if self.error is None:
            return f'Bearer realm="{REALM}"'
        text = self.message.replace("\\", "\\\\").replace('"', "'")
        return f'Bearer realm="{REALM}", error="{self.error}", error_description="{text}"'


@dataclass(frozen=True)
class Client:
    """Who called: the verified claims that matter."""

    issuer: str
    subject: str | None
    jti: str
    tenant: str | None


class KeySet:
    """The client public keys: a JWK Set from a file path or an http(s) URL."""

    def __init__(self, source: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, its "alg")
        self._loaded_at = -REFETCH_AFTER_S
        self._reload()
        if not self._keys:
            raise ValueError(f"JWK Set {source!r} holds no usable public key with a 'kid'")

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def _read(self) -> Any:
        if self.is_url:
            request = urllib.request.Request(self.source, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read(MAX_JWKS_BYTES))
        return json.loads(Path(self.source).read_text(encoding="utf-8"))

    def _reload(self) -> None:
        self._loaded_at = self._clock()
        try:
            data = self._read()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the JWK Set {self.source!r}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"JWK Set {self.source!r}: expected an object with a 'keys' list")
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in data["keys"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                log.warning("JWK Set %s: a key without a 'kid' is ignored", self.source)
                continue
            if entry.get("kty") == "oct" or "d" in entry:
                log.warning(
                    "JWK Set %s: key %r is not a public key: ignored", self.source, entry["kid"]
                )
                continue
            try:
                declared = entry.get("alg")
                keys[entry["kid"]] = (
                    jwt.PyJWK.from_dict(entry),
                    declared if isinstance(declared, str) else None,
                )
            except jwt.PyJWKError as exc:
                log.warning("JWK Set %s: key %r ignored: %s", self.source, entry["kid"], exc)
        self._keys = keys

    def key(self, kid: str) -> tuple[jwt.PyJWK, str | None] | None:
        """The key with this id and the algorithm it declares, if any."""
        with self._lock:
            found = self._keys.get(kid)
            if found is None and self._clock() - self._loaded_at >= REFETCH_AFTER_S:
                try:
                    self._reload()
                except ValueError as exc:
                    log.warning("%s", exc)
                found = self._keys.get(kid)
            return found


class ReplayCache:
    """The `jti` of every token seen, kept until the token expires."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def first_use(self, issuer: str, jti: str, expires: float, now: float) -> bool:
        """True the first time (issuer, jti) is presented, False for a replay."""
        with self._lock:
            if now >= self._next_prune:
                self._seen = {k: v for k, v in self._seen.items() if v + LEEWAY_S >= now}
                self._next_prune = now + 60.0
            key = (issuer, jti)
            if key in self._seen:
                return False
            self._seen[key] = expires
            return True


class Verifier:
    """Checks a bearer token for one call."""

    def __init__(
        self,
        keys: KeySet,
        issuers: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = LEEWAY_S,
        max_lifetime: float = MAX_LIFETIME_S,
    ) -> None:
        if not issuers:
            raise ValueError("at least one allowed issuer is needed")
        if max_lifetime <= 0:
            raise ValueError(f"the maximum token lifetime must be positive, got {max_lifetime!r}")
        self.max_lifetime = max_lifetime
        self.keys = keys
        self.issuers = tuple(issuers)
        self._clock = clock
        self._leeway = leeway
        self._replays = ReplayCache()

    def verify(self, authorization: str | None, audience: str) -> Client:
        """The caller, or AuthError. `audience` is the exact URL being called."""
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthError(
                f"token algorithm {alg!r} refused: CDS Hooks requires an asymmetric "
                "algorithm (RS384 or ES384 recommended; never none or HMAC)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("token header has no 'kid' naming the signing key")
        found = self.keys.key(kid)
        if found is None:
            raise AuthError(f"unknown signing key {kid!r}: not in the configured JWK Set")
        jwk, declared = found
        if declared is not None and declared != alg:
            raise AuthError(f"key {kid!r} is for {declared}, the token says {alg}")
        now = self._clock()
        claims = self._decode(token, jwk, alg, audience, now)
        issuer, jti = str(claims["iss"]), claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("token 'jti' must be a non-empty string")
        if not self._replays.first_use(issuer, jti, float(claims["exp"]), now):
            raise AuthError(f"token jti {jti!r} was already used: a replay is refused")
        subject = claims.get("sub")
        tenant = claims.get("tenant")
        return Client(
            issuer,
            subject if isinstance(subject, str) else None,
            jti,
            tenant if isinstance(tenant, str) else None,
        )

    def _decode(
        self, token: str, jwk: jwt.PyJWK, alg: str, audience: str, now: float
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=jwk.key,
                algorithms=[alg],
                audience=audience,
                issuer=list(self.issuers),
                leeway=self._leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired ('exp' is in the past)") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid ('iat' or 'nbf' is in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError(
                f"token audience ('aud') must be the URL called, {audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer ('iss') is not allowed") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify with the client's key") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError(f"invalid token: {exc}") from None
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise AuthError(
                    f"token {name!r} must be a number of seconds (a NumericDate), got {value!r}"
                )
        if float(claims["exp"]) + self._leeway < now:  # pragma: no cover - pyjwt checks it
            raise AuthError("token expired ('exp' is in the past)")
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self.max_lifetime:
            raise AuthError(
                f"token lifetime ('exp' - 'iat') of {lifetime:g} s is over the limit of "
                f"{self.max_lifetime:g} s: issue tokens that expire within 5 minutes"
            )
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing bearer token (Authorization: Bearer <JWT>)", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <JWT>'", error="invalid_request")
    return token.strip()
