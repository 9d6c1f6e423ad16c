"""The test bench of resonate-embedded (servers, ground truth, scenarios, demo): a
distribution of its own, installed beside the player for tests and benchmarks, never on a
speaker."""
