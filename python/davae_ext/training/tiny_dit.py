"""The embedded class-conditional default: a tiny ``DiTTransformer2DModel`` (patch 1, as the
paper's LightningDiT-XL/1) pretrained briefly here, offline, with rectified flow on the base
latents of :func:`~.data.class_photos` (six classes of crops of the shipped photos).

    python -m davae_ext.training.tiny_dit [--output-dir DIR] [--quick] [--force]

The VAE is the embedded tiny SD3.5 pipeline's (16 channels, factor 8): it stands in for the paper's
VA-VAE (f16c32). The DiT is trained at the base resolution, 64 px (an 8 x 8 latent, 64 tokens),
on the bicubic x1/2 images of 128 px crops, exactly what a DA-VAE's base channels hold at 128 px;
its latents are the VAE's (shift / scale) standardised per channel with statistics of the
training latents (the ImageNet recipe's normalisation), saved as the pipeline's
``latent_stats.json``. The result is a native :class:`~davae_ext.models.dit_pipeline.DAVAEDiTPipeline`
folder, cached per version and written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .cache import atomic_dir, cache_root, is_complete
from .data import ClassImageFolder, class_photos, downsample_base
from .plot import save_curves
from .tiny import build_command

VERSION = "tiny-dit-v1"
TRANSFORMER_CONFIG = dict(num_attention_heads=4, attention_head_dim=24, in_channels=16, out_channels=None,
                          sample_size=8, patch_size=1, norm_num_groups=1)


@dataclass
class TinyDiTRecipe:
    image_size: int = 128  # crops of the class photos; the DiT sees their x1/2 (64 px) latents
    layers: int = 4
    steps: int = 1500
    batch: int = 32
    lr: float = 5e-4
    crops_per_image: int = 8
    label_dropout: float = 0.1
    seed: int = 0

    @classmethod
    def quick(cls) -> "TinyDiTRecipe":
        return cls(layers=2, steps=30, crops_per_image=1)


def build_transformer(classes: int, layers: int):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**TRANSFORMER_CONFIG, num_layers=layers, num_embeds_ada_norm=classes)


@torch.no_grad()
def base_latents(vae, data: ClassImageFolder, crops: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``crops`` random crops / flips of every image, at half resolution, through the VAE
    (posterior mean, shift / scale): latents [N, C, h, w] and class labels [N]."""
    data.reseed(seed)
    images, labels = [], []
    for _ in range(crops):
        for i in range(len(data)):
            item = data[i]
            images.append(downsample_base(item["pixel_values"]))
            labels.append(item["class_label"])
    x = torch.stack(images)
    z = torch.cat([vae.encode(x[i:i + 32]).latent_dist.mean for i in range(0, len(x), 32)])
    z = (z - (vae.config.shift_factor or 0.0)) * (vae.config.scaling_factor or 1.0)
    return z, torch.tensor(labels)


def pretrain(transformer, latents: torch.Tensor, labels: torch.Tensor, null_class: int, recipe: TinyDiTRecipe,
             progress: bool) -> list[float]:
    """Rectified flow (target eps - x0 at timestep 1000 sigma, sigma = sigmoid(N(0, 1))) with
    labels dropped to the null class at ``label_dropout``."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.AdamW(transformer.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50))
    transformer.train()
    losses = []
    for _ in tqdm(range(recipe.steps), desc="tiny DiT", disable=not progress):
        idx = torch.randint(0, len(latents), (recipe.batch,), generator=gen)
        x0, y = latents[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.label_dropout] = null_class
        sigma = torch.sigmoid(torch.randn(len(idx), generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        pred = transformer((1 - s) * x0 + s * noise, timestep=sigma * 1000, class_labels=y).sample
        loss = F.mse_loss(pred[:, : x0.shape[1]], noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    transformer.eval()
    return losses


def disable_label_dropout(transformer) -> None:
    """diffusers' ``LabelEmbedding`` drops labels itself in training mode, from the global RNG;
    the trainers here drop them deterministically instead (the null class row stays)."""
    from diffusers.models.embeddings import LabelEmbedding

    for module in transformer.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def build_tiny_dit(path: Optional[str] = None, quick: bool = False, force: bool = False, progress: bool = True,
                   recipe: Optional[TinyDiTRecipe] = None) -> Path:
    """Build (or reuse) the tiny pretrained class-conditional DiT pipeline; returns its folder.
    ``path=None`` caches it in the user cache folder (``-quick`` for the quick recipe)."""
    from diffusers import AutoencoderKL

    from ..models.dit_pipeline import DAVAEDiTPipeline
    from .tiny import build_tiny_sd35

    recipe = recipe or (TinyDiTRecipe.quick() if quick else TinyDiTRecipe())
    folder = Path(path) if path else cache_root() / (VERSION + ("-quick" if quick else ""))
    if is_complete(folder) and not force:
        return folder
    start = time.time()
    vae = AutoencoderKL.from_pretrained(build_tiny_sd35(quick=quick, progress=progress), subfolder="vae").eval()
    data = ClassImageFolder(class_photos(), recipe.image_size, seed=recipe.seed, cache_in_memory=True)
    latents, labels = base_latents(vae, data, recipe.crops_per_image, recipe.seed)
    mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    latents = (latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.manual_seed(recipe.seed)
    transformer = build_transformer(len(data.classes), recipe.layers)
    disable_label_dropout(transformer)
    losses = pretrain(transformer, latents, labels, len(data.classes), recipe, progress)
    with atomic_dir(folder) as tmp:
        pipe = DAVAEDiTPipeline(transformer=transformer, vae=vae)
        pipe.latent_stats = {"mean": mean.tolist(), "std": std.tolist()}
        pipe.classes = list(data.classes)
        pipe.sampling_defaults = {"steps": 50, "guidance": 4.0, "cfg_start": 0.2, "time_warp": 0.3}
        pipe.save_pretrained(tmp)
        log = {"version": VERSION, "recipe": asdict(recipe), "classes": data.classes, "latents": len(latents),
               "loss": losses, "seconds": time.time() - start}
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        save_curves(tmp / "training_loss.png", {"flow matching": losses}, title=f"{VERSION}: base-latent pretraining")
    if progress:
        head, tail = (sum(v) / max(len(v), 1) for v in (losses[:20], losses[-20:]))
        print(f"tiny DiT pipeline at {folder}: flow loss {head:.3f} -> {tail:.3f}, {time.time() - start:.0f} s")
    return folder


def main(argv=None) -> None:
    build_command(build_tiny_dit, "tiny_dit", __doc__, argv)


if __name__ == "__main__":
    main()
