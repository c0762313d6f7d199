"""Class-conditional sampling with a DA-VAE DiT pipeline and against its native model at the
same output resolution: what ``train/sample_dit.py`` and ``train/eval_dit.py`` run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..nn import set_fused
from .cli import DEFAULT_DIT_PIPELINE


def ensure_pipeline(path: str, progress: bool) -> Path:
    """``path``; the default pipeline folder is built by the default fine-tuning run when missing."""
    folder = Path(path)
    if path == DEFAULT_DIT_PIPELINE and not (folder / "model_index.json").is_file():
        from .cli import finetune_dit_parser
        from .finetune_dit import finetune_dit

        finetune_dit(finetune_dit_parser().parse_args(["--fused", "--output-dir", str(folder.parent)]
                                                      + ([] if progress else ["--no-progress"])))
    return folder


def load_pipeline(folder, device: str, dtype: torch.dtype, fused: bool = True):
    """A :class:`~davae_ext.models.dit_pipeline.DAVAEDiTPipeline` on ``device`` in ``dtype``, its
    widened layers fused or not."""
    from ..models.dit_pipeline import DAVAEDiTPipeline

    pipe = DAVAEDiTPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    set_fused(pipe.transformer, fused)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_native_pipeline(model: str, device: str, dtype: torch.dtype):
    from .finetune_dit import load_native

    pipe = load_native(model).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_list(spec: Optional[str], classes: Sequence[str]) -> list[int]:
    """``--classes``: comma-separated indices or names (default: every class)."""
    if not spec:
        return list(range(len(classes)))
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit() and int(item) < len(classes):
            out.append(int(item))
        elif item in classes:
            out.append(list(classes).index(item))
        else:
            raise ValueError(f"--classes: {item!r} is neither a class index below {len(classes)} nor one of {list(classes)}")
    return out


def tokens(pipe, resolution: int) -> int:
    return (resolution // pipe.vae_scale_factor // pipe.transformer.config.patch_size) ** 2


def row_label(pipe, resolution: int, ips: float, name: str = "DA-VAE") -> str:
    return f"{name}\n{resolution}x{resolution}\n{tokens(pipe, resolution)} tokens\n{ips:.2f} img/s"


def sample(pipe, labels: Sequence[int], per_class: int, resolution: int, seed: int, batch_size: int, settings: dict,
           progress: bool = True) -> tuple[torch.Tensor, float]:
    """``per_class`` images of every class in ``labels`` (image k of a class seeded with seed + k),
    as [N, 3, H, W] in [-1, 1], and images/s (the first batch included)."""
    from tqdm.auto import tqdm

    jobs = [(c, seed + k) for c in labels for k in range(per_class)]
    kwargs = {k: v for k, v in dict(num_inference_steps=settings.get("steps"), guidance_scale=settings.get("guidance"),
                                    cfg_start=settings.get("cfg_start"), time_warp=settings.get("time_warp")).items()
              if v is not None}
    out = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(jobs), batch_size), desc="sampling", disable=not progress):
        chunk = jobs[i:i + batch_size]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        images = pipe([c for c, _ in chunk], height=resolution, width=resolution, generator=gens, output_type="pt",
                      **kwargs).images
        out.append(images.float().cpu() * 2 - 1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return torch.cat(out), len(jobs) / (time.perf_counter() - start)


def save_images(images: torch.Tensor, pipe, labels: Sequence[int], per_class: int, out: Path, label: str) -> list[str]:
    """One PNG per image (``<class>_<k>.png``) and ``grid.png``, one row per class."""
    from PIL import Image

    from .common import to_uint8
    from .plot import save_grid

    out.mkdir(parents=True, exist_ok=True)
    files = []
    arrays = to_uint8(images)
    for i, arr in enumerate(arrays):
        files.append(f"{pipe.classes[labels[i // per_class]]}_{i % per_class:03d}.png")
        Image.fromarray(arr).save(out / files[-1])
    rows = [images[j * per_class:(j + 1) * per_class] for j in range(len(labels))]
    save_grid(out / "grid.png", rows, [f"{pipe.classes[c]}\n{label}" for c in labels])
    return files


def save_comparison(path, images, native_images, pipe, labels: Sequence[int], per_class: int, label: str,
                    native_label: str) -> Path:
    """For each class (at most four), the DA-VAE pipeline's row above the native one's."""
    from .plot import save_grid

    rows, names = [], []
    for j, c in enumerate(labels[:4]):
        sl = slice(j * per_class, (j + 1) * per_class)
        rows += [images[sl], native_images[sl]]
        names += [f"{pipe.classes[c]}\n{label}", f"{pipe.classes[c]}\n{native_label}"]
    return save_grid(path, rows, names, title="same classes and seeds, same output resolution")


