"""Images as a dataset gives them (uint8 in [0, 255] or float in [0, 1]) as the networks see them.

The one place that knows both encodings: the in-memory and streamed paths, the shape check and a loaded
student (kd_runner.load_student) all normalise through `normalized`, so they feed a network the same numbers.
"""

from __future__ import annotations

import torch


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1]: uint8 ones divided by 255, float ones as they are."""
    x = images.float()
    return x / 255.0 if images.dtype == torch.uint8 else x


def normalized(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`images` normalised per channel (`mean`, `std`: shaped to broadcast, e.g. 1 x C x 1 x 1)."""
    return (unit_range(images) - mean) / std
