"""The player's one local clock.

Everything in the player that is "local time" is CLOCK_MONOTONIC_RAW in integer
microseconds (or nanoseconds where named ``_ns``).  It is the clock the ALSA
device is asked to timestamp in (``PCM_TSTAMP_TYPE_MONOTONIC_RAW``), it is not
slewed by NTP, and it is never mixed with ``trio.current_time()``.
"""

import time

LOCAL_CLOCK_ID = time.CLOCK_MONOTONIC_RAW


def local_now_ns() -> int:
    """Local clock now, in nanoseconds."""
    return time.clock_gettime_ns(LOCAL_CLOCK_ID)


def local_now_us() -> int:
    """Local clock now, in microseconds."""
    return time.clock_gettime_ns(LOCAL_CLOCK_ID) // 1000
