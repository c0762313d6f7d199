"""davae_ext.training.data: captioned image folders and the shipped photos."""

import json

import pytest
import torch

pytest.importorskip("skimage")
from davae_ext.training.data import EVAL_PHOTOS, ImageCaptionFolder, downsample_base, sample_photos  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DAVAE_CACHE", str(tmp_path_factory.getbasetemp() / "davae_cache"))


def test_photos_have_captions_and_a_fixed_held_out_split():
    train, held_out = sample_photos("train"), sample_photos("eval")
    ds_train, ds_eval = ImageCaptionFolder(train, 32), ImageCaptionFolder(held_out, 32)
    assert len(ds_train) == 17 and len(ds_eval) == len(EVAL_PHOTOS) == 2
    assert {it[0].stem for it in ds_eval.items} == set(EVAL_PHOTOS)
    assert not {it[0].stem for it in ds_train.items} & set(EVAL_PHOTOS)
    assert all(len(caption) > 10 for _, caption in ds_train.items + ds_eval.items)
    assert sample_photos("train") == train  # cached


def test_items_and_base_resolution():
    ds = ImageCaptionFolder(sample_photos("eval"), 64, center_crop=True, random_flip=False, return_base=True)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 64, 64) and item["base_pixel_values"].shape == (3, 32, 32)
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    torch.testing.assert_close(item["base_pixel_values"], downsample_base(item["pixel_values"]))
    assert torch.equal(ds[0]["pixel_values"], item["pixel_values"])  # centre crop, no flip: deterministic


def test_corrupt_file_is_skipped_with_one_warning(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "good.png")
    (tmp_path / "good.txt").write_text("a red square")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg") as record:
        ds = ImageCaptionFolder(tmp_path, 16)
    assert len([w for w in record if "broken.jpg" in str(w.message)]) == 1
    assert len(ds) == 1 and ds.skipped == ["broken.jpg"] and ds[0]["caption"] == "a red square"


def test_metadata_jsonl_captions(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "black"}) + "\n")
    assert ImageCaptionFolder(tmp_path, 8)[0]["caption"] == "black"


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no readable images"):
        ImageCaptionFolder(tmp_path, 16)


def test_in_memory_cache_gives_the_same_items():
    plain = ImageCaptionFolder(sample_photos("train"), 48, seed=3)
    cached = ImageCaptionFolder(sample_photos("train"), 48, seed=3, cache_in_memory=True)
    for i in range(2 * len(plain)):
        assert torch.equal(plain[i % len(plain)]["pixel_values"], cached[i % len(cached)]["pixel_values"])
