"""Placeholder until the checkpoint module lands (replaced by the verified save/load)."""

import torch


def load_checkpoint(path, map_location):
    return torch.load(path, map_location=map_location, weights_only=True)
