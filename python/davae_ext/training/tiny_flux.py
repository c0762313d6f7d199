"""The embedded default FLUX-class model: a tiny FLUX.1-architecture pipeline, built offline on
the shipped photos.

    python -m davae_ext.training.tiny_flux [--output-dir DIR] [--quick] [--force]

Architecture (FLUX.1 at toy width): ``FluxTransformer2DModel`` with double-stream and
single-stream blocks, 3-axis RoPE and a guidance embedding (``guidance_embeds=True``, as
FLUX.1-dev); a CLIP-L-like ``CLIPTextModel`` (pooled) and a T5 encoder with tokenizers built here;
the tiny SD3.5 pipeline's trained f8, 16-channel ``AutoencoderKL`` (FLUX's VAE is the same kind:
shift and scaling factors, no quant convs); FLUX's scheduler (dynamic shift from the token count).
The transformer is pretrained with rectified flow on the VAE latents of the photos, with a guidance
value drawn per item from [1, 5] so that the embedding is used (it is conditioned on guidance,
not distilled from a teacher). Seeds are fixed; the result is cached per version string and
written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from .cache import atomic_dir, cache_root, is_complete
from .plot import save_curves
from .tiny import (CLIP_L, T5_DIM, TinyRecipe, _latent_set, build_clip_tokenizer, build_command, build_t5_tokenizer,
                   build_text_encoders, build_tiny_sd35, fit_flow, remove_tokenizer_sources)
from .data import sample_photos

VERSION = "tiny-flux-v1"

TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=64, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=T5_DIM,
    pooled_projection_dim=CLIP_L, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
)
GUIDANCE_RANGE = (1.0, 5.0)
MAX_SEQUENCE_LENGTH = 64  # T5 tokens per prompt (FLUX.1-dev: 512); the captions are short


def build_transformer(layers: int):
    """``layers`` double-stream blocks and twice as many single-stream ones (FLUX.1: 19 and 38)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**TRANSFORMER_CONFIG, num_layers=layers, num_single_layers=2 * layers)


def _assemble(recipe: TinyRecipe, workdir: Path, sd35: Path):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    captions = [json.loads(line)["text"] for line in (sample_photos("all") / "metadata.jsonl").read_text().splitlines()]
    clip_tok = build_clip_tokenizer(workdir / "_tok_clip")
    t5_tok = build_t5_tokenizer(captions, workdir / "_tok_t5")
    clip_l, _, t5 = build_text_encoders(len(clip_tok), len(t5_tok))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=AutoencoderKL.from_pretrained(sd35, subfolder="vae"),
                        text_encoder=CLIPTextModel(clip_l.config), tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=build_transformer(recipe.transformer_layers))


def train_transformer(pipe, recipe: TinyRecipe, progress: bool) -> dict:
    """Rectified flow on the normalised latents of the photos, their captions (10% dropped) and a
    guidance value per item from :data:`GUIDANCE_RANGE`."""
    from ..models.flux import flux_predict

    gen = torch.Generator().manual_seed(recipe.seed + 1)
    vae = pipe.vae
    latents, captions = _latent_set(vae, recipe, gen)
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    with torch.no_grad():
        uniq = sorted(set(captions)) + [""]
        embeds, pooled, _ = pipe.encode_prompt(uniq, uniq, max_sequence_length=MAX_SEQUENCE_LENGTH)
    low, high = GUIDANCE_RANGE

    def predict(xt, e, p, sigma):
        guidance = low + (high - low) * torch.rand(len(xt), generator=gen)
        return flux_predict(pipe.transformer, xt, e, p, sigma, guidance)

    losses = fit_flow(pipe.transformer, predict, latents, captions, uniq, embeds, pooled, recipe, gen,
                      "tiny FLUX transformer", progress)
    return {"transformer_loss": losses}


def build_tiny_flux(path: Optional[str] = None, quick: bool = False, force: bool = False,
                    progress: bool = True, recipe: Optional[TinyRecipe] = None) -> Path:
    """Build (or reuse) the tiny pretrained FLUX-architecture pipeline; returns its folder. It
    takes its VAE from the tiny SD3.5 pipeline (built first if missing, same ``quick``)."""
    recipe = recipe or (TinyRecipe.quick() if quick else TinyRecipe())
    folder = Path(path) if path else cache_root() / (VERSION + ("-quick" if quick else ""))
    if is_complete(folder) and not force:
        return folder
    sd35 = build_tiny_sd35(quick=quick, progress=progress)
    start = time.time()
    torch.manual_seed(recipe.seed)
    with atomic_dir(folder) as tmp:
        pipe = _assemble(recipe, tmp, sd35)
        log = {"version": VERSION, "recipe": asdict(recipe), "vae_from": str(sd35)}
        log.update(train_transformer(pipe, recipe, progress))
        pipe.save_pretrained(tmp)
        remove_tokenizer_sources(tmp)
        log["seconds"] = time.time() - start
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        save_curves(tmp / "training_loss.png", {"flow matching": log["transformer_loss"]}, title=VERSION)
    if progress:
        t = log["transformer_loss"]
        head, tail = sum(t[:5]) / max(len(t[:5]), 1), sum(t[-5:]) / max(len(t[-5:]), 1)
        print(f"tiny FLUX pipeline at {folder}: flow loss {head:.3f} -> {tail:.3f}, {log['seconds']:.0f} s")
    return folder


def main(argv=None) -> None:
    build_command(build_tiny_flux, "tiny_flux", __doc__, argv)


if __name__ == "__main__":
    main()
