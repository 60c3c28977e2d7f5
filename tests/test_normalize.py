"""normalized: a uint8 image and the same image as float in [0, 1] reach the network as the same numbers."""

from __future__ import annotations

import torch

from kd_runner.data import channel_stats
from kd_runner.data.normalize import normalized, unit_range


def test_uint8_and_float_images_normalise_alike():
    images = torch.randint(0, 256, (4, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    as_float = images.float() / 255
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, -1, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, -1, 1, 1)
    assert torch.equal(unit_range(images), as_float) and torch.equal(unit_range(as_float), as_float)
    assert torch.equal(normalized(images, mean, std), normalized(as_float, mean, std))
    assert torch.allclose(normalized(images, mean, std)[:, 1], (as_float[:, 1] - 0.4) / 0.25)
    assert channel_stats(images) == channel_stats(as_float)
