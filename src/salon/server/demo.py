"""The demo endpoint of the bundled web app: a session per room name and a token per join.

``POST /demo/join {"room": ..., "name": ...}`` answers ``{"sessionId", "token", "apiKey"}``.
It lets anyone who can reach the server join any room, so it is for trying salon out only
(``salon serve --no-demo`` switches it off). It is rate-limited per client address (a token
bucket: 5 joins at once, then one per 10 s by default, ``--demo-rate-burst`` and
``--demo-rate-interval``); behind a reverse proxy, ``--forwarded-allow-ips`` makes the
address the client's rather than the proxy's. A production application mints tokens in its
own server, after its own authentication, with the REST API or an OpenTok server SDK.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from salon.errors import NotFoundError
from salon.ids import encode_session_id
from salon.server.limits import RateLimiter
from salon.store import Store
from salon.store.registry import Registry
from salon.tokens import Role, generate_token

__all__ = ["DEMO_TOKEN_LIFETIME", "DemoJoin", "DemoJoined", "router"]

#: Lifetime of a demo token, seconds.
DEMO_TOKEN_LIFETIME = 4 * 3600

router = APIRouter(tags=["demo"])


class DemoJoin(BaseModel):
    room: str = Field(min_length=1, max_length=100, pattern=r"^[\w.~-]+$")
    name: str = Field(min_length=1, max_length=100)


class DemoJoined(BaseModel):
    sessionId: str
    token: str
    apiKey: str


class _Rooms:
    """Room name to session ID, for the server's life (in memory)."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}
        self.lock = asyncio.Lock()


class _DemoError(BaseModel):
    code: str
    message: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": _DemoError, "description": "Malformed body (room or name missing or invalid)"},
    404: {"model": _DemoError, "description": "The demo project was deleted"},
    413: {"model": _DemoError, "description": "The request body is too large"},
    429: {
        "model": _DemoError,
        "description": "Too many joins from this client address; see Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}},
    },
}


async def _rate_limit(request: Request) -> None:
    """Refuses a join over the client address's rate (429), before the body is validated."""
    limiter: RateLimiter = request.app.state.demo_limiter
    address = request.client.host if request.client is not None else ""
    wait = limiter.acquire(address)
    if wait is not None:
        raise HTTPException(
            429,
            f"too many demo joins from {address}; retry later",
            headers={"Retry-After": RateLimiter.retry_after(wait)},
        )


@router.post(
    "/demo/join",
    summary="Demo only: a session for a room name and a publisher token",
    response_model=DemoJoined,
    responses=_RESPONSES,
    dependencies=[Depends(_rate_limit)],
)
async def demo_join(body: DemoJoin, request: Request) -> DemoJoined:
    state = request.app.state
    rooms: _Rooms | None = getattr(state, "demo_rooms", None)
    if rooms is None:
        rooms = state.demo_rooms = _Rooms()
    registry: Registry = state.registry
    store: Store = state.store
    project = await registry.project(state.demo_project.api_key)  # rotated or deleted since?
    if project is None:
        raise NotFoundError("the demo project was deleted")
    async with rooms.lock:
        session_id = rooms.sessions.get(body.room)
        if session_id is None:
            session_id = encode_session_id(project.api_key, "")
            record = await store.create_session(
                project.api_key,
                session_id,
                media_mode="routed",
                archive_mode="manual",
                location="",
                e2ee=False,
            )
            registry.remember_session(record)
            rooms.sessions[body.room] = session_id
    token = generate_token(
        project.api_key,
        project.api_secret,
        session_id,
        role=Role.PUBLISHER,
        expire_time=int(time.time()) + DEMO_TOKEN_LIFETIME,
        data=json.dumps({"name": body.name}),
    )
    return DemoJoined(sessionId=session_id, token=token, apiKey=project.api_key)
