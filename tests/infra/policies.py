"""Policies shared by tests whose subject is not authorization: they open everything explicitly,
since geofed denies every request that no rule allows."""

from __future__ import annotations

from typing import Any

OPEN_POLICY: dict[str, Any] = {"policy": [{"path": "/", "allow": ["all"], "to": ["anyone"]}]}
