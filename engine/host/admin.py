"""The service's admin routes: see and reload the rules in service.

- `GET /admin/rules`: the rule set in service (name, version, digest, directory, generation);
- `POST /admin/rules/reload`, body `{"rules": DIR}` or none (the configured directory):
  load, validate and swap in the rules (engine.host.reload); 422 with every problem located
  (`file:line:col`) when they do not load, the rules in service unchanged.

Admin calls carry a JWT signed by an **admin** key: the keys of `--admin-jwks`, a JWK Set
of its own, never the clients' (an EHR that signs its own tokens must not be able to grant
itself admin rights). Issuers: `--admin-issuer`, else the `--issuer` list; `aud` is the
URL called, as for every call. Without `--admin-jwks` the routes answer 403 (SIGHUP still
reloads); with `--insecure-dev` they are open like everything else.

(No `from __future__ import annotations` here: FastAPI reads the routes' annotations,
which name types local to `add_admin_routes`.)
"""

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from engine.errors import Problem as RuleProblem
from engine.errors import RuleSetError
from engine.host.auth import AuthError, KeySet, Verifier
from engine.host.reload import Generation, RuleHolder

if TYPE_CHECKING:
    from engine.host.service import Settings


class ReloadRequest(BaseModel):
    rules: str | None = Field(
        default=None,
        description="A rules directory on the server; default: the directory of the rules in "
        "service (--rules, or that of the last reload).",
        max_length=4096,
    )


class RulesInService(BaseModel):
    name: str
    version: str
    digest: str
    generation: int = Field(description="1 at startup, one more for each reload that changed it.")
    directory: str | None = Field(description="The rules directory; null: the bundled rules.")


class ReloadAnswer(BaseModel):
    changed: bool = Field(description="False when the directory holds the rules in service.")
    rules: RulesInService
    previous: RulesInService


def _shown(generation: Generation) -> RulesInService:
    return RulesInService(**generation.summary())


def _place(p: RuleProblem) -> str | None:
    if p.file is None:
        return None
    place = p.file
    if p.line is not None:
        place += f":{p.line}" + (f":{p.col}" if p.col is not None else "")
    return place


def add_admin_routes(app: FastAPI, holder: RuleHolder, settings: "Settings", base_url: str) -> None:
    """The admin routes on `app`, over the rules of `holder`."""
    from engine.host.service import ApiError, ErrorBody, Problem, _errors, _path

    issuers = settings.admin_issuers or settings.issuers
    verifier = Verifier(KeySet(settings.admin_jwks), issuers) if settings.admin_jwks else None
    bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="Admin JWT")

    def admin(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if settings.insecure_dev:
            return
        if verifier is None:
            raise ApiError(
                403,
                "the admin routes are off: start the service with --admin-jwks "
                "(SIGHUP reloads the rules without them)",
            )
        try:
            verifier.verify(request.headers.get("authorization"), base_url + _path(request))
        except AuthError as exc:
            raise ApiError(
                401,
                f"admin token: {exc.message}",
                headers={"WWW-Authenticate": exc.www_authenticate()},
            ) from None

    Admin = Annotated[None, Depends(admin)]
    off: dict[int | str, dict[str, Any]] = {
        403: {"model": ErrorBody, "description": "The admin routes are off (no --admin-jwks)"}
    }

    @app.get(
        "/admin/rules",
        response_model=RulesInService,
        responses={**_errors(401), **off},
        tags=["Admin"],
    )
    def rules_in_service(_admin: Admin) -> RulesInService:
        """The rule set answering requests now."""
        return _shown(holder.current)

    @app.post(
        "/admin/rules/reload",
        response_model=ReloadAnswer,
        responses={**_errors(400, 401, 413, 422), **off},
        tags=["Admin"],
    )
    def reload_rules(
        _admin: Admin, body: Annotated[ReloadRequest | None, Body()] = None
    ) -> ReloadAnswer:
        """Load, validate and swap in a rules directory. Requests in flight finish on the
        rules they started with; the next ones get the new rules. Refused with every problem
        (422) when the rules do not load; the rules in service then stay."""
        try:
            done = holder.reload(body.rules if body is not None else None)
        except RuleSetError as exc:
            problems = [
                Problem(
                    location=_place(p),
                    reason=f"{p.pointer}: {p.message}" if p.pointer else p.message,
                )
                for p in exc.problems
            ]
            raise ApiError(
                422,
                f"the rules have {len(problems)} problem(s); the rules in service are unchanged",
                problems,
            ) from exc
        return ReloadAnswer(
            changed=done.changed,
            rules=_shown(done.current),
            previous=_shown(done.previous),
        )


__all__ = ["ReloadAnswer", "ReloadRequest", "RulesInService", "add_admin_routes"]
