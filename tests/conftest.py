"""Test-wide settings: tiny tensors run fastest on one thread (and do not fight parallel jobs)."""

import torch

torch.set_num_threads(1)
