"""The roles beside the player, as one object the session feeds and the player reads.

Kept across sessions (the player owns it): what ``client/hello`` offers besides the
player role, the ``server/state`` objects (metadata, controller, color) and the group's
playback state, and the commands a control action becomes.  Guarantees: a malformed role
object is one log line and the previous state is kept; :meth:`RoleHub.clear` (transport
lost) forgets everything server-given, so nothing stale is shown or acted on.
"""

from __future__ import annotations

import logging
from typing import Any

from resonate_embedded.roles.announcement import ROLE as ANNOUNCEMENT_ROLE
from resonate_embedded.roles.announcement import support_object as announcement_support
from resonate_embedded.roles.color import ColorTimeline
from resonate_embedded.roles.controller import (
    Action, ControllerCommand, ControllerError, ControllerState, commands_for, parse_controller,
)
from resonate_embedded.roles.metadata import NowPlaying
from resonate_embedded.roles.scheduled import ServerToLocal

log = logging.getLogger(__name__)

STATE_ROLES = ("controller@v1", "metadata@v1", "color@v1")
LEGACY_ROLES = ("controller@v1", "metadata@v1")  # what aiosendspin 1.x/2.x know


class RoleHub:
    def __init__(self, server_to_local_us: ServerToLocal, announcements: bool = True) -> None:
        self.now_playing = NowPlaying(server_to_local_us)
        self.colors = ColorTimeline(server_to_local_us)
        self.controller: ControllerState | None = None
        self.playback_state: str | None = None
        self.group_name: str | None = None
        self._announcements = announcements

    def hello_roles(self, legacy: bool = False) -> tuple[tuple[str, Any], ...]:
        """``(role@version, support object or None)`` for ``client/hello``; ``legacy``: only
        the roles servers from before encryption know."""
        roles: list[tuple[str, Any]] = [(role, None) for role in
                                        (LEGACY_ROLES if legacy else STATE_ROLES)]
        if self._announcements and not legacy:
            roles.append((ANNOUNCEMENT_ROLE, announcement_support()))
        return tuple(roles)

    def on_server_state(self, payload: dict[str, Any]) -> None:
        """``server/state``: each role object present replaces that role's state."""
        if "metadata" in payload:
            self.now_playing.receive(payload["metadata"])
        if "color" in payload:
            self.colors.receive(payload["color"])
        if "controller" in payload:
            try:
                self.controller = parse_controller(payload["controller"])
            except ControllerError as exc:
                log.error("ignoring the controller state: %s", exc)

    def on_group_update(self, playback_state: str | None, group_name: str | None) -> None:
        if playback_state is not None:
            self.playback_state = playback_state
        if group_name is not None:
            self.group_name = group_name

    def commands_for(self, action: Action, volume_step: int) -> tuple[ControllerCommand, ...]:
        """What ``action`` sends now (nothing the server does not support); the controller
        state is advanced optimistically so that quick presses add up."""
        commands = commands_for(action, self.controller, self.playback_state, volume_step)
        if commands and self.controller is not None:
            self.controller = self.controller.after(commands)
        return commands

    def clear(self) -> None:
        self.now_playing.clear()
        self.colors.clear()
        self.controller = None
        self.playback_state = None
        self.group_name = None
