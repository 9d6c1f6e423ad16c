"""A GPIO line for the amplifier's tests (``resonate_embedded.amplifier.PowerSwitch``)."""

from __future__ import annotations

import attrs
import trio


@attrs.define
class FakeChip:
    """A GPIO line that records what it was told: ``(time, "on"|"off"|"close")``, time
    from ``clock`` (trio's, so a MockClock drives it).  ``fail_open`` makes
    :func:`open_switch` fail as a missing chip would."""

    clock: object = trio.current_time
    transitions: list[tuple[float, str]] = attrs.field(factory=list)
    level: bool = False
    closed: bool = False

    def on(self) -> None:
        self.level = True
        self.transitions.append((self.clock(), "on"))

    def off(self) -> None:
        self.level = False
        self.transitions.append((self.clock(), "off"))

    def close(self) -> None:
        self.level = False
        self.closed = True
        self.transitions.append((self.clock(), "close"))
