"""Training augmentation on whole batches, on the device, with no per-sample Python.

The engine keeps each split as one tensor on the device and draws batches by index; these functions
transform such a batch (N x C x H x W, uint8 or float, any device) in a few tensor ops. Every random
choice is drawn from the training loop's CPU generator, so a run is reproducible from its seed and
draws the same crops on CPU and GPU. Each op returns a batch of the input's size and dtype.

The ops are torchvision's standard training transforms done batch-wise:
- `random_crop`: `RandomCrop(size, padding=p)` (zero padding, uniform offsets);
- `random_resized_crop`: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`, the crop box drawn
  as torchvision draws it (10 attempts, then a centred crop), resized bilinearly back to the input size;
- `random_flip`: `RandomHorizontalFlip(0.5)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Augmentation:
    """A dataset's standard training augmentation: pad-and-crop and/or random-resized crop, then flip."""

    crop_padding: int = 0  # > 0: random crop of the original size after zero-padding every side
    resized_crop: bool = False  # random-resized crop back to the original size
    flip: bool = False  # horizontal flip with probability 1/2

    def __call__(
        self, images: Tensor, generator: torch.Generator, rows: slice | None = None, total: int | None = None
    ) -> Tensor:
        """Augment `images`, rows `rows` of a batch of `total` (default: the whole batch).

        The random choices are drawn for all `total` images, so the processes of a multi-process run,
        each holding its rows of the batch, draw what a single process would for the whole batch.
        """
        rows = rows or slice(0, len(images))
        total = total or len(images)
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, generator, rows, total)
        if self.resized_crop:
            images = random_resized_crop(images, generator, rows, total)
        if self.flip:
            images = random_flip(images, generator, rows, total)
        return images


def augmentation_preset(name: str | bool, image_size: int) -> Augmentation | None:
    """`dataset.augment` by name: none (or false), crop_flip (zero-pad by image_size / 8, crop, flip, as
    CIFAR's RandomCrop(32, padding=4) + flip), resized_crop_flip (random-resized crop + flip, as ImageNet's)."""
    if name == "crop_flip":
        return Augmentation(crop_padding=max(1, image_size // 8), flip=True)
    if name == "resized_crop_flip":
        return Augmentation(resized_crop=True, flip=True)
    return None


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """The draws (made on the CPU, by the stage's generator) on the batch's device; to a GPU through pinned
    memory without blocking, so the host keeps queueing the step's kernels."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def crop_padded(images: Tensor, padding: int, top: Tensor, left: Tensor) -> Tensor:
    """Crop each image of the zero-padded batch at (top[i], left[i]) to the original size."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = to_device(top, device)[:, None] + torch.arange(h, device=device)  # n x h
    cols = to_device(left, device)[:, None] + torch.arange(w, device=device)  # n x w
    batch = torch.arange(n, device=device)[:, None, None]
    # advanced indices around a slice: the result is n x h x w x c
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_crop(images: Tensor, padding: int, generator: torch.Generator, rows=slice(None), total=None) -> Tensor:
    total = total or images.shape[0]
    top = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[rows]
    left = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[rows]
    return crop_padded(images, padding, top, left)


def random_flip(images: Tensor, generator: torch.Generator, rows=slice(None), total=None) -> Tensor:
    total = total or images.shape[0]
    flip = to_device(torch.rand(total, generator=generator)[rows] < 0.5, images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Tensor:
    """n crop boxes (top, left, height, width), drawn as torchvision's RandomResizedCrop.get_params draws one.

    Per image: up to `attempts` draws of an area fraction in `scale` and a log-uniform aspect ratio in
    `ratio`; the first box that fits is kept; if none fits, the centred crop of the clamped ratio.
    """
    area = height * width * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first box that fits (0 when none does)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top = ((height - h + 1) * torch.rand(n, generator=generator)).floor()
    left = ((width - w + 1) * torch.rand(n, generator=generator)).floor()

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    none = ~fits.any(dim=1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.float32)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(none[:, None], fallback, boxes)


def _sample_positions(start: Tensor, length: Tensor, size: int) -> Tensor:
    """grid_sample coordinates of `size` output pixels resizing the span [start, start + length) of one axis.

    Output pixel j samples the input at start + (j + 0.5) * length / size (pixel-edge coordinates), clamped to
    the span's first and last pixel centres, which is what resizing the cropped image does (bilinear,
    align_corners=False). With align_corners=False, grid coordinate -1..1 spans the input's edges 0..size.
    """
    j = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    pos = start[:, None] + j * (length / size)[:, None]
    pos = torch.minimum(torch.maximum(pos, start[:, None] + 0.5), (start + length)[:, None] - 0.5)
    return 2 * pos / size - 1


def crop_resize(images: Tensor, boxes: Tensor) -> Tensor:
    """Crop box i = (top, left, height, width) of image i and resize it bilinearly to the input's size."""
    n, _, h, w = images.shape
    top, left, bh, bw = to_device(boxes.float(), images.device).unbind(dim=1)
    gx = _sample_positions(left, bw, w)  # n x w
    gy = _sample_positions(top, bh, h)  # n x h
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # n x h x w x (x, y)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def random_resized_crop(images: Tensor, generator: torch.Generator, rows=slice(None), total=None) -> Tensor:
    n, _, h, w = images.shape
    return crop_resize(images, resized_crop_boxes(total or n, h, w, generator)[rows])
