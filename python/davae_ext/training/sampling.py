"""Sampling with a DA-VAE pipeline and against its base model at the same output resolution:
what ``train/sample.py`` runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .cli import DEFAULT_PIPELINE


def prompts_of(prompt: Optional[Sequence[str]], prompt_file: Optional[str]) -> list[str]:
    """The ``--prompt`` values, then the lines of ``--prompts``; the fixed default prompts if neither."""
    from .synthetic import DEFAULT_PROMPTS, read_prompts

    prompts = list(prompt or []) + (read_prompts(prompt_file) if prompt_file else [])
    return prompts or list(DEFAULT_PROMPTS)


def ensure_pipeline(path: str, progress: bool) -> Path:
    """``path``; the default pipeline folder is built by the default fine-tuning run when missing
    (the command line's checks, :func:`.cli.check_sample`, have looked at any other)."""
    folder = Path(path)
    if path == DEFAULT_PIPELINE and not (folder / "model_index.json").is_file():
        from .cli import finetune_parser
        from .finetune import finetune

        finetune(finetune_parser().parse_args(["--fused", "--output-dir", str(folder.parent)]
                                              + ([] if progress else ["--no-progress"])))
    return folder


FALLBACK_SETTINGS = {"steps": 30, "guidance": 2.5, "shift": 4.0, "negative_prompt": ""}


def resolve_settings(args, pipe) -> dict:
    """Steps, guidance, shift and negative prompt: the command line's where given, else the
    pipeline's ``sampling_defaults`` (its training recipe's), else :data:`FALLBACK_SETTINGS`. A
    pipeline whose scheduler shifts by the token count (FLUX's) keeps doing so (shift None)
    unless ``--shift`` is given."""
    stored = getattr(pipe, "sampling_defaults", {}) or {}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else stored.get(k, fallback)
              for k, fallback in FALLBACK_SETTINGS.items()}
    if args.shift is None and pipe.scheduler.config.get("use_dynamic_shifting"):
        chosen["shift"] = None
    return chosen


def call_options(pipe) -> dict:
    """Call arguments a pipeline was fine-tuned with besides the settings (FLUX: the T5 length),
    for the DA-VAE and the native pipeline alike."""
    stored = getattr(pipe, "sampling_defaults", {}) or {}
    return {k: stored[k] for k in ("max_sequence_length",) if k in stored}


def set_shift(pipe, shift: Optional[float]) -> None:
    """A flow-matching scheduler with the fixed timestep shift ``shift``, otherwise configured as
    the pipeline's (None: the pipeline's own, token-count shift included)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if shift is not None:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift,
                                                                     use_dynamic_shifting=False)


def load_pipeline(cls, folder, device: str, dtype: torch.dtype, shift: Optional[float] = None):
    """``cls.from_pretrained(folder)`` on ``device`` in ``dtype``, its scheduler's shift set to
    ``shift`` when given."""
    pipe = cls.from_pretrained(folder, torch_dtype=dtype).to(device)
    set_shift(pipe, shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts: Sequence[str], resolution: int, *, seed: int, steps: int, guidance: float, batch_size: int,
           negative_prompt: Optional[str] = None, label: str = "", progress: bool = True, **options):
    """Every prompt in batches (image i seeded with seed + i); the PIL images and images/s (the
    first batch, warm-up, included). ``options`` go to every pipeline call."""
    from tqdm.auto import tqdm

    images = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(prompts), batch_size), desc=label, disable=not progress):
        chunk = list(prompts[i:i + batch_size])
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        neg = [negative_prompt] * len(chunk) if negative_prompt else None
        images += pipe(chunk, negative_prompt=neg, height=resolution, width=resolution, num_inference_steps=steps,
                       guidance_scale=guidance, generator=gens, **options).images
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images, len(prompts) / (time.perf_counter() - start)


def save_images(images, prompts: Sequence[str], out: Path, label: str) -> list[str]:
    """One PNG per image and ``grid.png``: rows of four, each image captioned with its prompt and
    each row labelled with ``label``; the file names."""
    from .plot import save_grid

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, im in enumerate(images):
        files.append(f"{k:04d}.png")
        im.save(out / files[-1])
    rows = [list(images[i:i + 4]) for i in range(0, len(images), 4)]
    captions = [list(prompts[i:i + 4]) for i in range(0, len(images), 4)]
    save_grid(out / "grid.png", rows, [label] * len(rows), captions)
    return files


def save_comparison(path, images, native_images, prompts: Sequence[str], label: str, native_label: str) -> Path:
    """The DA-VAE pipeline's images above the base pipeline's for the same prompts and seeds."""
    from .plot import save_grid

    n = min(len(images), 8)
    return save_grid(path, [list(images[:n]), list(native_images[:n])], [label, native_label],
                     [list(prompts[:n]), list(prompts[:n])], title="same prompts and seeds, same output resolution")


def pipeline_classes(pipe_dir) -> tuple[type, type]:
    """The DA-VAE pipeline class a folder holds (its ``model_index.json``) and its base pipeline's."""
    name = json.loads((Path(pipe_dir) / "model_index.json").read_text()).get("_class_name", "")
    if name == "DAVAEFluxPipeline":
        from diffusers import FluxPipeline

        from ..models.flux_pipeline import DAVAEFluxPipeline

        return DAVAEFluxPipeline, FluxPipeline
    from diffusers import StableDiffusion3Pipeline

    from ..models.pipeline import DAVAEStableDiffusion3Pipeline

    return DAVAEStableDiffusion3Pipeline, StableDiffusion3Pipeline


def tokens_per_image(pipe, resolution: int) -> int:
    """Transformer tokens of a ``resolution`` image in a text-to-image pipeline, DA-VAE or base, SD3
    or FLUX (``FluxPipeline`` has no ``patch_size``: it packs 2 x 2 latent pixels per token)."""
    cell = pipe.vae_scale_factor * getattr(pipe, "patch_size", 2)
    return (resolution // cell) ** 2


def base_model_of(pipe_dir: Path) -> str:
    """The base pipeline a fine-tuning run used (its ``args.json``)."""
    args_file = Path(pipe_dir).parent / "args.json"
    if args_file.is_file():
        model = json.loads(args_file.read_text()).get("model")
        if model:
            return model
    raise ValueError("--compare-native needs --base-model (the pipeline folder does not record its base model)")
