"""CacheEntry: a valid entry is read back, a missing one is made once, a broken one is made again."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from kd_runner.errors import UserError
from kd_runner.store.cache import CacheEntry, cache_lock, miss_reason


class Maker:
    """A `make` that counts its calls."""

    def __init__(self, value: float = 1.0):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return torch.full((2, 3), self.value), {"shape": [2, 3]}


def entry(tmp_path) -> CacheEntry:
    return CacheEntry(tmp_path / "cache" / "key-train", "test cache entry", "making again")


def test_a_miss_makes_once_and_a_hit_reads_it_back(tmp_path):
    make = Maker()
    with cache_lock(entry(tmp_path).path):
        obj, manifest, made = entry(tmp_path).get_or_make(make)
        again, manifest_again, made_again = entry(tmp_path).get_or_make(make)
    assert (made, made_again, make.calls) == (True, False, 1)
    assert torch.equal(obj, again) and manifest_again["shape"] == manifest["shape"] == [2, 3]
    assert set(json.loads((tmp_path / "cache" / "key-train.json").read_text())) == {"sha256", "shape"}


@pytest.mark.parametrize("damage", ["flip_byte", "other_content", "no_data", "bad_manifest"])
def test_a_corrupted_entry_is_reported_removed_and_made_again(damage, tmp_path, caplog):
    e = entry(tmp_path)
    e.get_or_make(Maker(1.0))
    data, manifest = e.path.with_suffix(".pt"), e.path.with_suffix(".json")
    if damage == "flip_byte":
        raw = bytearray(data.read_bytes())
        raw[-20] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "other_content":  # a readable file that is not the one the manifest describes
        torch.save(torch.zeros(2, 3), data)
    elif damage == "no_data":
        data.unlink()
    else:
        manifest.write_text("{not json")
    make = Maker(2.0)
    with caplog.at_level(logging.WARNING):
        obj, _, made = e.get_or_make(make)
    assert made and make.calls == 1 and torch.equal(obj, torch.full((2, 3), 2.0))
    assert "test cache entry" in caplog.text and "corrupted or incomplete: removed, making again" in caplog.text
    assert e.get_or_make(Maker(3.0))[2] is False  # the new entry is valid


def test_an_entry_its_reader_rejects_is_made_again(tmp_path):
    e = entry(tmp_path)
    e.get_or_make(Maker(1.0))
    make = Maker(2.0)
    obj, _, made = e.get_or_make(make, fits=lambda obj, manifest: obj.shape[0] == 5)
    assert made and make.calls == 1 and torch.equal(obj, torch.full((2, 3), 2.0))


def test_a_missing_entry_in_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: False)
    make = Maker()
    with pytest.raises(UserError, match="cache_dir=.* cannot be written"):
        entry(tmp_path).get_or_make(make)
    assert make.calls == 0


def test_a_miss_names_the_nearest_cached_entry_and_how_its_key_differs(tmp_path):
    cache = tmp_path / "cache"
    parts = {"teacher": {"name": "cnn", "lr": 0.1}, "compute": {"device": "cpu", "threads": 2}}
    CacheEntry(cache / "cnn-aaa", "t", "r").publish(torch.zeros(1), key_parts=parts)
    far = {"teacher": {"name": "cnn", "lr": 0.5}, "compute": {"device": "cpu", "threads": 4}}
    CacheEntry(cache / "cnn-bbb", "t", "r").publish(torch.zeros(1), key_parts=far)
    CacheEntry(cache / "mlp-ccc", "t", "r").publish(torch.zeros(1), key_parts={**parts, "compute": {}})
    wanted = {"teacher": {"name": "cnn", "lr": 0.1}, "compute": {"device": "cpu", "threads": 1}}
    assert miss_reason(cache / "cnn-new", wanted) == (
        "no cached entry cnn-new (nearest cached, cnn-aaa, differs in: compute.threads: 2 -> 1)"
    )
    assert "no other entry of resnet18" in miss_reason(cache / "resnet18-new", wanted)
