#!/usr/bin/env python3
"""Memory the writer allocates per block, measured with tracemalloc (numpy reports its buffers).

    python tests/benchmarks/writer_allocations.py [--device null] [--blocks 200]

The writer's block path (queue read, drift correction, volume, device write) runs on a
real ALSA output against a queue of 25 ms PCM chunks, in four conditions: volume 100 with
no correction due, volume 100 with one correction per block, volume 50, and volume 50 with
a correction.  For each it prints the peak of memory allocated during one block (the
transient buffers) and what stays allocated, averaged over the blocks, in bytes.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np
import trio

from resonate_embedded.audio.alsa_output import AlsaOutput, OutputConfig
from resonate_embedded.audio.commands import PcmChunk
from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.volume import gain_q15
from resonate_embedded.audio.writer import Writer

SHAPE = PcmShape(48000, 2, 16)
CHUNK_FRAMES = 1200  # what aiosendspin 10 sends: 25 ms at 48 kHz
BLOCK_FRAMES = 960  # one 20 ms period


class _NoClock:
    mapping = None


def _writer(device: str) -> tuple[Writer, AlsaOutput]:
    _, commands = trio.open_memory_channel(1)
    events, _ = trio.open_memory_channel(1)
    writer = Writer(OutputConfig(device), 0, _NoClock(), commands, events)
    return writer, AlsaOutput(OutputConfig(device), SHAPE)


def _fill(writer: Writer, frames: int) -> None:
    rng = np.random.default_rng(1)
    for i in range(frames // CHUNK_FRAMES + 1):
        pcm = rng.integers(-20000, 20000, size=(CHUNK_FRAMES, 2), dtype=np.int16)
        writer._push(PcmChunk(i * CHUNK_FRAMES * 1_000_000 // 48000, pcm, SHAPE, pcm.nbytes))


def measure(device: str, blocks: int, volume: int, ppm: int) -> tuple[float, float]:
    """(mean peak bytes during a block, mean bytes kept per block)."""
    writer, out = _writer(device)
    writer._volume.set_target(gain_q15(volume, False), immediate=True)
    writer._controller.ppm = ppm
    _fill(writer, (blocks + 5) * BLOCK_FRAMES * 2)
    seg = writer._queue.head
    position = writer._write_block(out, seg, 0, BLOCK_FRAMES, 0)  # warm-up: scratch buffers
    peaks, kept = [], []
    tracemalloc.start()
    try:
        for _ in range(blocks):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            position = writer._write_block(out, seg, position, BLOCK_FRAMES, 0)
            current, peak = tracemalloc.get_traced_memory()
            peaks.append(peak - before)
            kept.append(current - before)
    finally:
        tracemalloc.stop()
        out.close()
    return float(np.mean(peaks)), float(np.mean(kept))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="null", help="ALSA device (default: null)")
    p.add_argument("--blocks", type=int, default=200)
    args = p.parse_args()
    print(f"{BLOCK_FRAMES}-frame blocks of 16-bit stereo ({BLOCK_FRAMES * 4} bytes), "
          f"{args.blocks} blocks each")
    print(f"{'condition':<34} {'peak B/block':>12} {'kept B/block':>12}")
    # 1000 ppm: about one correction per block of 960 frames
    for name, volume, ppm in (("volume 100, no correction due", 100, 0),
                              ("volume 100, ~1 correction/block", 100, 1000),
                              ("volume 50, no correction due", 50, 0),
                              ("volume 50, ~1 correction/block", 50, 1000)):
        peak, kept = measure(args.device, args.blocks, volume, ppm)
        print(f"{name:<34} {peak:>12.0f} {kept:>12.0f}")


if __name__ == "__main__":
    main()
