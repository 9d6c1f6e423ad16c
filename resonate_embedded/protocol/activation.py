"""Who may do what on an encrypted session: the ``server/activate`` rules of the spec."""

from __future__ import annotations

import attrs


@attrs.frozen
class Security:
    """What an encrypted session needs beyond the plaintext one."""

    pairing_store: object  # resonate_embedded.pairing.PairingStore
    unpaired_access: bool = True
    url: str | None = None
    spoken_code: bool = True  # offer the Dynamic Pairing Code, spoken through the speaker


def activities_allowed(category: str, activities: set[str], unpaired_access: bool) -> bool:
    """Spec messaging.md, server/activate: the activity sets each matched PSK allows."""
    if category == "lt":
        return activities <= {"playback"}
    if unpaired_access:
        return activities <= {"playback", "pairing"}
    return activities <= {"pairing"}


def admissible(category: str, activities: set[str], has_roles: bool, unpaired_access: bool) -> bool:
    return activities_allowed(category, activities, unpaired_access) and (
        not has_roles or activities_allowed(category, activities | {"playback"}, unpaired_access))
