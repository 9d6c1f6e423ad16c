"""Software volume: curve, ramp, bit-exact unity, integer-only paths."""

import numpy as np

from resonate_embedded.audio.volume import UNITY_Q15, VolumeStage, gain_q15


def test_curve():
    assert gain_q15(100, False) == UNITY_Q15
    assert gain_q15(0, False) == 0
    assert gain_q15(100, True) == 0
    assert gain_q15(50, False) == round(UNITY_Q15 * 0.5 ** 1.5)


def test_unity_is_bit_exact_and_no_copy():
    v = VolumeStage(480)
    block = np.arange(-1000, 1000, dtype=np.int16).reshape(-1, 2)
    assert v.apply(block) is block


def test_ramp_reaches_target_and_is_monotonic():
    v = VolumeStage(480)
    v.set_target(gain_q15(50, False))
    block = np.full((960, 2), 20000, dtype=np.int16)
    out = v.apply(block)
    assert np.all(np.diff(out[:, 0].astype(np.int32)) <= 0)
    assert out[-1, 0] == (20000 * gain_q15(50, False)) >> 15
    again = v.apply(block)
    assert np.all(again[:, 0] == out[-1, 0])


def test_24_bit_does_not_overflow():
    v = VolumeStage(1)
    v.set_target(gain_q15(99, False), immediate=True)
    block = np.array([[(1 << 23) - 1, -(1 << 23)]], dtype=np.int32)
    out = v.apply(block)
    assert 0 < out[0, 0] < (1 << 23) and -(1 << 23) < out[0, 1] < 0


def test_a_ramp_over_blocks_shorter_than_it_reaches_the_target_exactly():
    stage = VolumeStage(ramp_frames=2400)
    stage.set_target(gain_q15(25, False), immediate=True)
    stage.set_target(UNITY_Q15)
    block = np.full((100, 2), 1000, dtype=np.int16)
    for _ in range(30):  # 3000 frames in blocks of 100
        stage.apply(block)
    assert stage.current_q15 == UNITY_Q15
    assert stage.apply(block) is block  # bit-exact again
