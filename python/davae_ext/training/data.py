"""Image + caption datasets: any folder of captioned images, and the real photographs that
scikit-image and scikit-learn ship (no downloads)."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .cache import atomic_dir, cache_root, is_complete

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _read_captions(root: Path) -> dict[str, str]:
    meta = root / "metadata.jsonl"
    captions: dict[str, str] = {}
    if meta.exists():
        for line in meta.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                captions[row["file_name"]] = row.get("text", "")
    return captions


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1.0


def downsample_base(image: torch.Tensor) -> torch.Tensor:
    """The base-resolution image of the paper: bicubic x1/2, no antialias, clamped to [-1, 1]."""
    squeeze = image.dim() == 3
    x = image.unsqueeze(0) if squeeze else image
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(h // 2, w // 2), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x.squeeze(0) if squeeze else x


class ImageCaptionFolder(Dataset):
    """A folder of images with captions (``metadata.jsonl`` with ``file_name`` + ``text`` as in
    diffusers' ImageFolder convention, or a ``.txt`` beside each image; neither: empty caption).

    Items are dicts: ``pixel_values`` (3, R, R) in [-1, 1], ``caption``, ``file_name``, and with
    ``return_base=True`` also ``base_pixel_values`` (3, R/2, R/2), the bicubic x1/2 image. Images
    are resized so the short side is R, then centre- or randomly cropped, and flipped at random
    with ``random_flip``. Unreadable files are skipped with one warning each (``skipped`` lists
    them); a folder with no readable image raises ValueError. ``cache_in_memory=True`` keeps each
    decoded, resized image after its first use (for small folders read many times, such as the
    shipped photos during the tiny model's training).
    """

    def __init__(self, root, resolution: int, center_crop: bool = False, random_flip: bool = True,
                 return_base: bool = False, seed: Optional[int] = None, cache_in_memory: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"ImageCaptionFolder: {self.root} is not a folder")
        if resolution <= 0 or (return_base and resolution % 2):
            raise ValueError(f"ImageCaptionFolder: 'resolution' must be a positive (even with return_base) int, got {resolution}")
        self.resolution, self.center_crop, self.random_flip, self.return_base = resolution, center_crop, random_flip, return_base
        self.rng = random.Random(seed)
        self._resized: Optional[dict[int, Image.Image]] = {} if cache_in_memory else None
        self.skipped: list[str] = []
        self.items: list[tuple[Path, str]] = self._discover()
        if not self.items:
            raise ValueError(f"{type(self).__name__}: no readable images in {self.root}"
                             + (f" (skipped {len(self.skipped)} unreadable)" if self.skipped else ""))

    def _readable_images(self, folder: Path) -> list[Path]:
        """The images in ``folder`` PIL can decode; the others are skipped with a warning each."""
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(path) as im:
                    im.convert("RGB").load()
            except Exception as exc:  # corrupt, truncated, unreadable
                self.skipped.append(str(path.relative_to(self.root)))
                warnings.warn(f"{type(self).__name__}: skipping unreadable image {path} ({type(exc).__name__}: {exc})")
                continue
            found.append(path)
        return found

    def _discover(self) -> list[tuple[Path, str]]:
        captions = _read_captions(self.root)
        items = []
        for path in self._readable_images(self.root):
            caption = captions.get(path.name)
            if caption is None:
                txt = path.with_suffix(".txt")
                caption = txt.read_text().strip() if txt.exists() else ""
            items.append((path, caption))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        """Reset the crop / flip randomness (training scripts reseed per step, so a resumed run
        sees the same crops as an uninterrupted one)."""
        self.rng.seed(seed)

    def _load_resized(self, index: int) -> Image.Image:
        """The image with its short side resized to the resolution (deterministic, so cacheable)."""
        if self._resized is not None and index in self._resized:
            return self._resized[index]
        R = self.resolution
        with Image.open(self.items[index][0]) as im:
            img = im.convert("RGB")
        w, h = img.size
        scale = R / min(w, h)
        img = img.resize((max(R, round(w * scale)), max(R, round(h * scale))), Image.BICUBIC)
        if self._resized is not None:
            self._resized[index] = img
        return img

    def _crop(self, img: Image.Image) -> Image.Image:
        R = self.resolution
        w, h = img.size
        if self.center_crop:
            left, top = (w - R) // 2, (h - R) // 2
        else:
            left, top = self.rng.randint(0, w - R), self.rng.randint(0, h - R)
        return img.crop((left, top, left + R, top + R))

    def __getitem__(self, index: int) -> dict:
        path, caption = self.items[index]
        img = self._crop(self._load_resized(index))
        if self.random_flip and self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = _to_tensor(img)
        item = {"pixel_values": pixels, "caption": caption, "file_name": path.name}
        if self.return_base:
            item["base_pixel_values"] = downsample_base(pixels)
        return item


class ClassImageFolder(ImageCaptionFolder):
    """A class-labelled image folder laid out as torchvision's ``ImageFolder``: one subfolder per
    class (``root/<class>/<image>``), classes numbered in sorted name order. Items are
    :class:`ImageCaptionFolder`'s with ``class_label`` (int) added and the class name as caption;
    ``classes`` lists the names. Raises ValueError for a folder without class subfolders."""

    def _discover(self) -> list[tuple[Path, str]]:
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            loose = [p.name for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            raise ValueError(f"ClassImageFolder: {self.root} has no class subfolders; expected root/<class>/<image> "
                             "as torchvision's ImageFolder" + (f" (it holds {len(loose)} images directly)" if loose else ""))
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        items = []
        for name in self.classes:
            items += [(path, name) for path in self._readable_images(self.root / name)]
        self.labels = [self.class_index[name] for _, name in items]
        return items

    def __getitem__(self, index: int) -> dict:
        return super().__getitem__(index) | {"class_label": self.labels[index]}


# The photographs shipped inside scikit-image, scikit-learn and matplotlib, with hand-written
# captions: the twelve colour ones and seven greyscale ones (detail and texture; stored as RGB).
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png", "a smiling astronaut in a white spacesuit holding a helmet, with a flag behind her"),
    "chelsea": ("skimage", "chelsea.png", "a ginger tabby cat looking to the side"),
    "coffee": ("skimage", "coffee.png", "a cup of coffee on a saucer with a spoon, seen from above"),
    "hubble": ("skimage", "hubble_deep_field.jpg", "a deep field of distant galaxies in black space"),
    "ihc": ("skimage", "ihc.png", "a microscope slide of stained tissue in brown and blue"),
    "motorcycle_left": ("skimage", "motorcycle_left.png", "a red and black motorcycle parked indoors"),
    "motorcycle_right": ("skimage", "motorcycle_right.png", "a motorcycle parked in a garage, seen from the right"),
    "retina": ("skimage", "retina.jpg", "an orange photograph of a human retina with blood vessels"),
    "rocket": ("skimage", "rocket.jpg", "a rocket on the launch pad under a blue sky"),
    "colour_wheel": ("skimage", "color.png", "a colour wheel of every hue on a black background"),
    "china": ("sklearn", "china.jpg", "a chinese temple with a red roof among green trees"),
    "flower": ("sklearn", "flower.jpg", "a pink flower with a yellow centre on a dark background"),
    "hopper": ("matplotlib", "grace_hopper.jpg", "a portrait of a woman in a navy uniform in front of a flag"),
    "camera": ("skimage", "camera.png", "a black and white photograph of a man with a camera on a tripod"),
    "coins": ("skimage", "coins.png", "a black and white photograph of old coins in rows"),
    "moon": ("skimage", "moon.png", "a grey photograph of the surface of the moon"),
    "brick": ("skimage", "brick.png", "a grey brick wall"),
    "grass": ("skimage", "grass.png", "a grey photograph of grass"),
    "gravel": ("skimage", "gravel.png", "a grey photograph of gravel"),
}
EVAL_PHOTOS = ("motorcycle_right", "flower")  # fixed held-out split
PHOTOS_VERSION = "photos-v2"


def _photo_source(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / name


# The class-labelled default for class-conditional DiTs: crops of six colour photos, one class each.
PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "china", "retina")
CLASS_PHOTOS_VERSION = "photo-classes-v1"


def class_photos(crops: int = 8, size: int = 128, seed: int = 0) -> Path:
    """A :class:`ClassImageFolder` (in the user cache) of :data:`PHOTO_CLASSES`: ``crops`` square
    crops per photo (random scale 0.55-1 of the short side, random position, seeded), resized to
    ``size`` px."""
    folder = cache_root() / f"{CLASS_PHOTOS_VERSION}-{crops}x{size}-{seed}"
    if is_complete(folder):
        return folder
    rng = random.Random(seed)
    with atomic_dir(folder) as tmp:
        for key in PHOTO_CLASSES:
            package, name, _ = PHOTOS[key]
            (tmp / key).mkdir()
            with Image.open(_photo_source(package, name)) as im:
                img = im.convert("RGB")
            w, h = img.size
            for k in range(crops):
                s = int(min(w, h) * rng.uniform(0.55, 1.0))
                left, top = rng.randint(0, w - s), rng.randint(0, h - s)
                img.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS).save(tmp / key / f"{k:03d}.png")
    return folder


def sample_photos(split: str = "train") -> Path:
    """A folder (in the user cache) holding the shipped photos of ``split`` ("train", "eval" or
    "all") as PNGs with a ``metadata.jsonl``, ready for :class:`ImageCaptionFolder`."""
    splits = {"train": [k for k in PHOTOS if k not in EVAL_PHOTOS], "eval": list(EVAL_PHOTOS), "all": list(PHOTOS)}
    if split not in splits:
        raise ValueError(f"sample_photos: 'split' must be one of {tuple(splits)}, got {split!r}")
    folder = cache_root() / PHOTOS_VERSION / split
    if is_complete(folder):
        return folder
    with atomic_dir(folder) as tmp:
        with open(tmp / "metadata.jsonl", "w") as meta:
            for key in splits[split]:
                package, name, caption = PHOTOS[key]
                with Image.open(_photo_source(package, name)) as im:
                    im.convert("RGB").save(tmp / f"{key}.png")
                meta.write(json.dumps({"file_name": f"{key}.png", "text": caption}) + "\n")
    return folder
