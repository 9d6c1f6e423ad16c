"""The one-line status a user sees: what the player believes about its sync."""

from __future__ import annotations


def format_status(player) -> str:
    stats = player.writer.stats
    f = player.clock.filter
    session = player.session
    server = session.info.server_name if session else "no server"
    fmt = (session.info.stream_format if session else None) or "-"
    if f.synchronized:
        mapping = f.mapping()
        clock = (f"offset {mapping.offset_us / 1000:+.3f} ms ±{f.error_us} us "
                 f"drift {f.drift_ppm:+.1f} ppm")
    else:
        clock = "clock not synchronised"
    return (f"[{stats.state}] {server} {fmt} | {clock} | error {stats.error_us:+d} us "
            f"corr {stats.correction_ppm:+d} ppm (-{stats.frames_dropped}/+{stats.frames_inserted}) "
            f"dac {stats.dac_ppm if stats.dac_ppm is not None else float('nan'):+.1f} ppm "
            f"| rtt {player.clock.last_rtt_us if player.clock.last_rtt_us is not None else '-'} us "
            f"| dac queue {stats.queued_device_frames} fr, buffer {stats.buffered_ms} ms "
            f"| underruns {stats.underruns}")
