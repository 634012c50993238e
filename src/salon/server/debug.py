"""``GET /debug/processes``: the server's processes as a soak test sees them (off by default).

Served only when the server starts with ``SALON_DEBUG_ENDPOINTS=1`` (otherwise the path is a
404 like any unknown one), and only to a request authenticated like the REST API
(``X-OPENTOK-AUTH``: a project JWT). It reports, for the main process and every live media
worker: pid, RSS, open file descriptors, UDP sockets and asyncio tasks, plus the media
counters of each worker (routers, transports, producers, consumers). With
``?tracemalloc=K`` and ``SALON_TRACEMALLOC`` set, each process also lists the K allocation
sites that grew the most since the first such request, and with ``?objects=K`` the K object
types whose live count grew the most, with what refers to them (:mod:`salon.media.memtrace`).
``salon bench soak`` reads it once per cycle. ``?pipes=1`` adds every pipe end of the workers
(its ports, peer, whether it is SRTP, its counters).
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request

from salon.errors import InvalidRequestError
from salon.media import memtrace
from salon.media.plane import SfuMediaPlane
from salon.media.worker import _rss, _udp_sockets
from salon.server.auth import authenticate

__all__ = ["ENV", "router"]

ENV = "SALON_DEBUG_ENDPOINTS"

router = APIRouter()


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@router.get("/debug/processes", tags=["server"], summary="Memory, descriptors and tasks of every process")
async def processes(
    request: Request,
    x_opentok_auth: Annotated[str | None, Header(description="HS256 JWT signed with the API secret")] = None,
    tracemalloc: Annotated[int, Query(ge=0, le=200)] = 0,
    objects: Annotated[int, Query(ge=0, le=200)] = 0,
    pipes: Annotated[bool, Query(description="also list every pipe end (ports, peer, counters)")] = False,
) -> dict[str, Any]:
    await authenticate(request.app.state.registry, x_opentok_auth, None)
    if tracemalloc and not memtrace.start_from_env():
        raise InvalidRequestError(f"tracemalloc is off: start the server with {memtrace.ENV}=N")
    media: SfuMediaPlane | None = request.app.state.media
    workers = await media.stats(tracemalloc=tracemalloc, objects=objects) if media is not None else []
    main = {
        "pid": os.getpid(),
        "rss": _rss(),
        "fds": _fds(),
        "udp_sockets": _udp_sockets(),
        "tasks": len(asyncio.all_tasks()),
        "tracemalloc": memtrace.growth(tracemalloc),
        "objects": memtrace.census(objects),
        "heap": memtrace.heap(),
    }
    result: dict[str, Any] = {"main": main, "workers": workers}
    if pipes:
        result["pipes"] = await media.pipe_dumps() if media is not None else []
    return result
