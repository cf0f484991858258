"""Shared pytest configuration."""

import os

import torch
from hypothesis import HealthCheck, settings

# Unit tests work on tiny tensors: one intra-op thread is faster (no OpenMP barriers) and
# immune to a busy machine. Benchmarks set their own thread count.
torch.set_num_threads(1)

settings.register_profile(  # CI: the same examples every run (no flaky draws)
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
