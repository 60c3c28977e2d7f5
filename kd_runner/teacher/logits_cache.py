"""The teacher's logits on disk: computed once per teacher and data, shared by every job of a sweep.

Without training augmentation the teacher sees the same inputs in every epoch and in every job that
shares the teacher and the data (all the alphas, temperatures and seeds of a sweep), so its logits on a
split are computed once (`engine.predict`: eval mode, inference mode, large batches) and stored under
`cache_dir/teacher_logits/`, keyed by

- the teacher's digest (`Teacher.key`: architecture, recipe, seed, dataset, checkpoint) and a digest of
  its weights (a retrained teacher, or another version of pretrained weights, is another entry),
- a digest of the data they are computed on (every split's images and labels, and the normalisation),
- the compute settings that change the numbers (device type, precision, memory format, compile).

A lock makes concurrent jobs compute an entry once. An entry is published atomically, then a manifest
holding its sha256 and shape; an entry that does not match its manifest is reported, removed and
computed again. The cache holds exactly the tensors the computation produced, so a run gives identical
results with and without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kd_runner.data import Dataset
from kd_runner.data.splits import SplitData
from kd_runner.store.cache import CacheEntry, cache_lock
from kd_runner.store.files import digest, tensors_digest
from kd_runner.train import engine

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def data_digest(data: Dataset) -> str:
    """Digest of what a network is fed (`Dataset.content_digest`: both splits and the normalisation)."""
    return data.content_digest


def weights_digest(model: nn.Module) -> str:
    """Digest of a network's weights and buffers: the teacher that computes the logits, whatever made it."""
    state = model.state_dict()
    return tensors_digest(state.values(), list(state))


def entry_key(teacher_key: str, weights: str, d: SplitData) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "teacher": teacher_key,
        "weights": weights,
        "data": data_digest(d.source),
        "compute": d.compute.describe(),
    }
    return digest(parts)


def teacher_logits(
    model: nn.Module,
    teacher_key: str,
    d: SplitData,
    splits: tuple[str, ...],
    cache_dir: Path | str,
) -> tuple[dict[str, torch.Tensor], str]:
    """The teacher's logits on each named split of `d` (on d's device), and where they came from:
    ({split: logits}, "cache" | "computed")."""
    key = entry_key(teacher_key, weights_digest(model), d)
    folder = Path(cache_dir) / "teacher_logits"
    logits, computed = {}, []
    with cache_lock(folder / key):  # one lock for all the splits of this teacher and data
        for split in splits:
            cached, made = _split_logits(model, d, getattr(d, split).images, folder / f"{key}-{split}")
            logits[split] = cached.to(d.device)
            if made:
                computed.append(split)
    source = "computed" if computed else "cache"
    log.info("teacher logits (%s): %s %s", ", ".join(splits), source, folder / key)
    return logits, source


def _split_logits(model: nn.Module, d: SplitData, images, path: Path) -> tuple[torch.Tensor, bool]:
    """(logits on `images`, whether they were computed): the entry at `path` when it holds one row per image,
    else computed and published there."""

    def predict() -> tuple[torch.Tensor, dict]:
        logits = engine.predict(model, d, images).cpu()
        return logits, {"shape": list(logits.shape)}

    def fits(logits, manifest) -> bool:
        return (
            isinstance(logits, torch.Tensor)
            and list(logits.shape) == manifest.get("shape")
            and len(logits) == len(images)
        )

    entry = CacheEntry(path, "teacher logits cache entry", "computing again")
    logits, _, made = entry.get_or_make(predict, fits)
    return logits, made
