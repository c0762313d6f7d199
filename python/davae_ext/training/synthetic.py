"""Synthetic fine-tuning data (the paper's recipe: fine-tune on images the base model generates):
one PNG + one caption line per sample in ``metadata.jsonl``, resumable (existing samples are
kept, so a killed run continues where it stopped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

# Fixed prompts of the sample grids (the subjects of the shipped photos).
DEFAULT_PROMPTS = ("a ginger tabby cat looking to the side", "a rocket on the launch pad under a blue sky",
                   "a chinese temple with a red roof among green trees",
                   "a cup of coffee on a saucer with a spoon, seen from above")


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line of a text file."""
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"read_prompts: {path} has no prompts")
    return prompts


def generate(pipe, prompts: Sequence[str], count: int, folder, resolution: int, steps: int = 20,
             guidance: float = 2.5, seed: int = 0, batch_size: int = 4, progress: bool = True) -> Path:
    """Generate ``count`` images (prompts cycled, seed ``seed + i`` for sample i) into ``folder``."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "metadata.jsonl"
    done = {}
    if meta.exists():
        for line in meta.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if (folder / row["file_name"]).exists():
                    done[row["file_name"]] = row["text"]
    todo = [i for i in range(count) if f"{i:06d}.png" not in done]
    bar = tqdm(total=count, initial=count - len(todo), desc="synthetic data", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        texts = [prompts[i % len(prompts)] for i in chunk]
        gens = [torch.Generator().manual_seed(seed + i) for i in chunk]
        images = pipe(texts, height=resolution, width=resolution, num_inference_steps=steps,
                      guidance_scale=guidance, generator=gens).images
        for i, text, image in zip(chunk, texts, images):
            name = f"{i:06d}.png"
            tmp = folder / f".{name}.tmp"
            image.save(tmp, format="PNG")
            tmp.replace(folder / name)
            with open(meta, "a") as f:
                f.write(json.dumps({"file_name": name, "text": text}) + "\n")
        bar.update(len(chunk))
    bar.close()
    return folder
