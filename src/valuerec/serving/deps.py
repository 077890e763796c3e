"""Request dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

from valuerec.serving.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.svc
