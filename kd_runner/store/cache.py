"""Cache entries shared by runs: made once under a lock, published with a checksum, checked when read.

An entry `<path>` is `<path>.pt` (the object) and `<path>.json` (its manifest: the object's sha256 and
what the maker adds). The manifest is written last, so its presence marks a complete entry; an entry
that is unreadable, does not match its manifest or does not fit its reader is reported, removed and
made again. The teacher cache (teacher/stage.py) and the logits cache (teacher/logits_cache.py) are
both such entries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from kd_runner.store.files import check_writable, file_lock, remove_stale_temps, save_torch, sha256_file, write_json

log = logging.getLogger(__name__)
Fits = Callable[[object, dict], bool]  # whether a checksummed (object, manifest) is what its reader needs
Make = Callable[[], tuple[object, dict]]  # a new (object, manifest) when there is no valid entry


@contextmanager
def cache_lock(stem: Path, stop: Callable[[], object] | None = None, stage: str | None = None) -> Iterator[None]:
    """Hold `stem`.lock, the lock of the entries named `stem`...: their one writer is then this process, so
    the temporary files a killed writer of theirs left are removed first. `stop`, `stage`: see file_lock."""
    with file_lock(stem.with_suffix(".lock"), stop, stage):
        remove_stale_temps(stem.parent, stem.name)
        yield


@dataclass(frozen=True)
class CacheEntry:
    """One entry: where it is, and how a broken one is reported ("`what` ... removed, `redo`")."""

    path: Path
    what: str
    redo: str

    def get_or_make(self, make: Make, fits: Fits | None = None) -> tuple[object, dict, bool]:
        """(object, manifest, made): the entry when it is valid, else `make()`'s (object, manifest), published.
        Call it holding `cache_lock`, so that concurrent runs make it once."""
        loaded = self.load(fits)
        if loaded is not None:
            return *loaded, False
        check_writable(self.path.parent, "cache_dir")  # a read-only cache serves its entries, it takes none
        obj, manifest = make()
        self.publish(obj, **manifest)
        return obj, manifest, True

    def publish(self, obj, **manifest) -> None:
        """Save `obj`, then the manifest with its sha256 (both writes atomic)."""
        data = self.path.with_suffix(".pt")
        save_torch(obj, data)
        write_json(self.path.with_suffix(".json"), {"sha256": sha256_file(data), **manifest})

    def load(self, fits: Fits | None = None) -> tuple[object, dict] | None:
        """(object, manifest), or None when there is none. One that is unreadable, does not match its
        manifest, or that `fits` rejects (another network's weights, pickled code, a manifest without its
        fields) is reported, removed, and None."""
        data, manifest_path = self.path.with_suffix(".pt"), self.path.with_suffix(".json")
        if not manifest_path.is_file():
            return None
        with suppress(Exception):  # whatever makes it unreadable (JSON, I/O, pickled code, torch), it is broken
            manifest = json.loads(manifest_path.read_text())
            if data.is_file() and sha256_file(data) == manifest["sha256"]:
                obj = torch.load(data, map_location="cpu", weights_only=True)
                if fits is None or fits(obj, manifest):
                    return obj, manifest
        log.warning("%s %s is corrupted or incomplete: removed, %s", self.what, self.path, self.redo)
        data.unlink(missing_ok=True)
        manifest_path.unlink(missing_ok=True)
        return None


def miss_reason(path: Path, parts: dict, field: str = "key_parts") -> str:
    """Why no entry `path` was found, for the log: the cached entry beside it (same name up to its key)
    whose manifest's `field` (the parts its key digests) differs from `parts` in the fewest places, and
    those places; or that there is none."""
    prefix = path.name.rsplit("-", 1)[0] + "-"
    parts, nearest = json.loads(json.dumps(parts)), None  # as a manifest holds them (lists, string keys)
    for manifest_path in sorted(path.parent.glob(f"{prefix}*.json")):
        with suppress(Exception):  # an unreadable manifest is no candidate (its entry reports itself when read)
            cached = json.loads(manifest_path.read_text())[field]
            differs = differences(cached, parts)
            if nearest is None or len(differs) < len(nearest[1]):
                nearest = manifest_path.stem, differs
    if nearest is None:
        return f"no cached entry {path.name} (no other entry of {prefix[:-1]} in {path.parent} to compare with)"
    name, differs = nearest
    return f"no cached entry {path.name} (nearest cached, {name}, differs in: {'; '.join(differs)})"


def differences(old, new, prefix: str = "") -> list[str]:
    """The dotted keys where two nested mappings of plain values differ, each as `key: old -> new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in sorted(set(old) | set(new), key=str)
            for line in differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]
