"""Who is calling: an API key (`parley keys create`) or a JSON Web Token, from the
`Authorization: Bearer` header (or `?token=` on a WebSocket, which browsers cannot give
headers)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.config import Settings
from core.storage.api import KEY_PREFIX, ApiStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """A credential's user: `user_id` counts for limits and budgets (platform "api")."""

    user_id: str
    name: str
    admin: bool


class Authenticator:
    def __init__(self, keys: ApiStore, settings: Settings) -> None:
        self._keys = keys
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks_url = str(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._admin_role = settings.jwt_admin_role
        self._jwks: Any = None  # jwt.PyJWKClient, made on first use (it caches the keys)

    @property
    def accepts_jwt(self) -> bool:
        return bool(self._secret or self._jwks_url)

    async def caller(self, request: web.Request, *, query_token: bool = False) -> Caller | None:
        """The request's caller, or None when its credentials are missing or not valid."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token and query_token:
            token = request.query.get("token", "")
        if not token:
            return None
        if token.startswith(KEY_PREFIX):
            key = await self._keys.key_for(token)
            return None if key is None else Caller(f"key:{key.name}", key.name, key.admin)
        if self.accepts_jwt:
            return await self._from_jwt(token)
        return None

    async def _from_jwt(self, token: str) -> Caller | None:
        import jwt  # PyJWT: only the http extra installs it

        try:
            if self._secret is not None:
                key: Any = self._secret
                algorithms = ["HS256"]
            else:
                if self._jwks is None:
                    self._jwks = jwt.PyJWKClient(str(self._jwks_url), cache_keys=True)
                # The key set is fetched over the network (then cached): not on the loop.
                signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                key, algorithms = signing.key, ["RS256", "ES256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            log.info("JWT refused: %s", exc)
            return None
        subject = str(claims["sub"])
        roles = claims.get("roles")
        admin = isinstance(roles, list) and self._admin_role in roles
        return Caller(f"jwt:{subject}", str(claims.get("name") or subject), admin)
