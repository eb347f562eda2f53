"""Test-wide settings.

The suite runs as ``pytest -n 2`` on two cores: one intra-op thread per worker keeps the
workers from oversubscribing the cores (two workers x torch's default threads), which made
small-tensor tests several times slower without changing any result.
"""
import torch

torch.set_num_threads(1)
