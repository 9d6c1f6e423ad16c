"""Who may do what on an encrypted session: the ``server/activate`` rules of the spec."""

from __future__ import annotations

import attrs

from resonate_embedded.protocol.messages import ServerActivate


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


def pairing_acceptable(msg: ServerActivate, category: str, spoken_code: bool) -> bool:
    """Spec: pairing_psk if and only if the matched PSK is the pairing PSK; otherwise only a
    method (and format) this speaker offers: the Dynamic Pairing Code in digits."""
    if msg.pairing_method == "pairing_psk":
        return category == "pr"
    return (msg.pairing_method == "dynamic_pairing_code" and spoken_code and category != "pr"
            and msg.pairing_format == "digits")


def refusal_reason(msg: ServerActivate, category: str, has_roles: bool, unpaired_access: bool,
                   pairing_ok: bool) -> str | None:
    """Why a ``server/activate`` is refused (the goodbye reason), or None: it is admissible."""
    activities = set(msg.activities)
    if not msg.unknown_activities and admissible(category, activities, has_roles, unpaired_access):
        return None
    if (not msg.unknown_activities and category != "lt" and not unpaired_access
            and admissible(category, activities, has_roles, True)
            and ("pairing" not in activities or pairing_ok)):
        return "pairing_required"
    return "unauthorized"
