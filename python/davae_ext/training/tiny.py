"""The embedded default model: a tiny SD3.5-Medium-architecture pipeline, built and briefly
pretrained here on the photos that scikit-image / scikit-learn ship, fully offline.

    python -m davae_ext.training.tiny [--output-dir DIR] [--quick] [--force]

Architecture (SD3.5-M at toy width): ``AutoencoderKL`` with 16 latent channels and spatial factor
8 (SD3-style: shift/scaling factors, no quant convs); ``SD3Transformer2DModel`` with patch size 2,
qk RMS norm and a dual-attention layer; CLIP-L-like and CLIP-G-like
``CLIPTextModelWithProjection`` and a T5 encoder with tokenizers built here (a character-level
CLIP BPE vocabulary, a Unigram T5 vocabulary trained on the captions); and a
``FlowMatchEulerDiscreteScheduler``. The VAE is trained for reconstruction (L1 + KL) on random
crops, then the transformer with the rectified-flow objective on VAE latents of the photos with
their captions. Seeds are fixed; the result is cached per version string and written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .cache import atomic_dir, cache_root, is_complete
from .plot import save_curves
from .data import ImageCaptionFolder, sample_photos
from .evaluation import colourfulness, mean_colour_error, psnr

VERSION = "tiny-sd35-v3"


@dataclass
class TinyRecipe:
    resolution: int = 128  # image size the transformer is trained at (latent 16 x 16)
    vae_crop: int = 32  # training crops (the VAE is convolutional), drawn from photos resized to vae_source
    vae_source: int = 160
    vae_steps: int = 1500
    vae_basis_steps: int = 1100  # of vae_steps: encoder and decoder fitted to a PCA patch code first
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_warmup: int = 50
    transformer_steps: int = 500
    transformer_batch: int = 8
    transformer_lr: float = 5e-4
    transformer_layers: int = 3
    crops_per_photo: int = 6
    seed: int = 0

    @classmethod
    def quick(cls) -> "TinyRecipe":
        return cls(vae_steps=60, vae_basis_steps=40, transformer_steps=25, transformer_layers=2, crops_per_photo=2)


# ----------------------------------------------------------------------------------------------
# Tokenizers, built offline
# ----------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of GPT-2 / CLIP BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_clip_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (every byte, alone and word-final; no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def build_t5_tokenizer(captions: list[str], folder: Path, vocab_size: int = 200):
    """A Unigram (SentencePiece-style) T5 tokenizer trained on the captions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(captions * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.save(str(folder / "tokenizer.json"))
    return T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="</s>", pad_token="<pad>",
                           unk_token="<unk>", extra_ids=0, model_max_length=512)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
CLIP_L, CLIP_G, T5_DIM = 32, 64, 96  # T5 width >= CLIP-L + CLIP-G widths (SD3 pads CLIP to T5)


def build_text_encoders(clip_vocab: int, t5_vocab: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(hidden):
        cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                             num_hidden_layers=2, vocab_size=clip_vocab, projection_dim=hidden,
                             max_position_embeddings=77, bos_token_id=clip_vocab - 2, eos_token_id=clip_vocab - 1,
                             pad_token_id=clip_vocab - 1)
        return CLIPTextModelWithProjection(cfg)

    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=T5_DIM, d_kv=16, d_ff=2 * T5_DIM, num_layers=2,
                                 num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    return clip(CLIP_L), clip(CLIP_G), t5


# The architecture, as plain configs (the scripts' argument checks read them without building).
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1, norm_num_groups=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64), sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
    shift_factor=0.0, scaling_factor=1.0,
    # Two departures from SD3's VAE, both measured on the held-out photos: one normalisation group
    # (with 8 groups of 2 channels each group's mean is removed per image, and colour with it:
    # +0.7 dB), and no mid-block attention (it sees 16 tokens on the 32 px training crops and 256 at
    # 128 px: +0.2 dB, and cheaper).
    mid_block_add_attention=False,
)
TRANSFORMER_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=T5_DIM, caption_projection_dim=64, pooled_projection_dim=CLIP_L + CLIP_G,
    pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",
)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_transformer(layers: int):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMER_CONFIG, num_layers=layers)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _batches(dataset, batch: int, steps: int, generator: torch.Generator):
    n = len(dataset)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=generator).tolist()
        items = [dataset[i] for i in idx]
        yield torch.stack([it["pixel_values"] for it in items]), [it["caption"] for it in items]


def augment(x: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    """Random-scale square crops resized to ``crop`` and 90-degree rotations. Nothing that changes
    colour: channel permutations and inversions taught the VAE to reconstruct grey (held-out
    colourfulness 0.67x the originals' with them, 0.84x without)."""
    out = []
    size = x.shape[-1]
    for img in x:
        s = int(torch.randint(crop, size + 1, (), generator=gen))
        top, left = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=gen))
        c = img[None, :, top:top + s, left:left + s]
        if s != crop:
            c = F.interpolate(c, size=(crop, crop), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        out.append(torch.rot90(c, int(torch.randint(0, 4, (), generator=gen)), (2, 3)))
    return torch.cat(out)


class PatchBasis:
    """The principal components of ``patch`` x ``patch`` colour patches: a linear f-``patch``
    autoencoder (16 components of 8x8 patches reconstruct the held-out photos at 24.5 dB).

    ``encode`` maps images [N, 3, H, W] to whitened codes [N, k, H/patch, W/patch] (unit variance
    per component on the fitting data); ``decode`` is its inverse on the kept components."""

    def __init__(self, images: torch.Tensor, components: int, patch: int):
        self.patch = patch
        p = self._patches(images)
        self.mean = p.mean(0)
        _, s, v = torch.linalg.svd(p - self.mean, full_matrices=False)
        self.basis = v[:components]
        self.std = s[:components] / (len(p) - 1) ** 0.5

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.patch).permute(0, 2, 3, 1).flatten(0, 2)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        codes = (self._patches(images) - self.mean) @ self.basis.T / self.std
        return codes.view(n, h // self.patch, w // self.patch, -1).permute(0, 3, 1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        p = (codes.permute(0, 2, 3, 1) * self.std) @ self.basis + self.mean
        return F.pixel_shuffle(p.permute(0, 3, 1, 2), self.patch)


def colour_report(reconstruction: torch.Tensor, images: torch.Tensor, prefix: str) -> dict:
    """PSNR, colourfulness ratio (reconstruction / original, per image) and mean colour error."""
    ratio = colourfulness(reconstruction) / colourfulness(images).clamp_min(1e-6)
    return {f"{prefix}_psnr_db": psnr(reconstruction, images), f"{prefix}_colourfulness_ratio": ratio.tolist(),
            f"{prefix}_mean_colour_error": mean_colour_error(reconstruction, images)}


def train_vae(vae, recipe: TinyRecipe, progress: bool) -> dict:
    """Two phases on random crops of the training photos.

    1. ``vae_basis_steps`` steps fitting each half to a PCA patch code (:class:`PatchBasis`, fitted
       on the photos, 16 components of 8x8 patches): the encoder's posterior mean regresses the
       code (MSE) and the decoder reconstructs the image from the code (L1). Both halves get a
       clean target from the first step (after 500 steps: 20.1 dB held-out, against 19.0 dB for
       the same network trained end to end with its encoder pulled towards the code).
    2. The rest end to end as a VAE: L1 on a posterior sample plus 1e-4 x KL per element.

    AdamW at ``vae_lr`` with a linear warm-up and a cosine decay over all steps."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(recipe.seed)
    data = ImageCaptionFolder(sample_photos("train"), recipe.vae_source, seed=recipe.seed, cache_in_memory=True)
    basis = PatchBasis(torch.stack([data[i]["pixel_values"] for i in range(len(data))]),
                       vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1))
    # The posterior's log-variance starts at -6 (std 0.05 of the unit-variance code) so that the
    # switch to sampled latents does not bury the code in noise; phase 2 then learns it.
    C = vae.config.latent_channels
    with torch.no_grad():
        vae.encoder.conv_out.weight[C:].zero_()
        vae.encoder.conv_out.bias[C:].fill_(-6.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    total, warm = max(recipe.vae_steps, 1), max(recipe.vae_warmup, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, 0.5 * (1 + math.cos(math.pi * i / total))))
    vae.train()
    losses = []
    for step, (x, _) in enumerate(tqdm(_batches(data, recipe.vae_batch, recipe.vae_steps, gen),
                                       total=recipe.vae_steps, desc="tiny VAE", disable=not progress)):
        x = augment(x, recipe.vae_crop, gen)
        posterior = vae.encode(x).latent_dist
        if step < recipe.vae_basis_steps:
            code = basis.encode(x)
            loss = F.mse_loss(posterior.mean, code) + F.l1_loss(vae.decode(code).sample, x)
        else:
            rec = vae.decode(posterior.sample(generator=gen)).sample
            loss = F.l1_loss(rec, x) + 1e-4 * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    # Quality on the held-out photos, centre crops at the transformer's resolution, next to the
    # linear patch code's.
    held_out = ImageCaptionFolder(sample_photos("eval"), recipe.resolution, center_crop=True, random_flip=False)
    with torch.no_grad():
        x = torch.stack([held_out[i]["pixel_values"] for i in range(len(held_out))])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    log = {"vae_loss": losses, "vae_basis_steps": recipe.vae_basis_steps}
    log.update(colour_report(rec, x, "vae_heldout"))
    log.update(colour_report(basis.decode(basis.encode(x)), x, "patch_pca_heldout"))
    return log


def _latent_set(vae, recipe: TinyRecipe, gen: torch.Generator):
    data = ImageCaptionFolder(sample_photos("train"), recipe.resolution, seed=recipe.seed, cache_in_memory=True)
    images, captions = [], []
    for _ in range(recipe.crops_per_photo):
        for i in range(len(data)):
            item = data[i]
            images.append(item["pixel_values"])
            captions.append(item["caption"])
    with torch.no_grad():
        latents = torch.cat([vae.encode(torch.stack(images[i:i + 16])).latent_dist.mode()
                             for i in range(0, len(images), 16)])
    return latents, captions


def train_transformer(pipe, recipe: TinyRecipe, progress: bool) -> dict:
    """Rectified flow (x_t = (1 - s) x0 + s eps, target eps - x0) with logit-normal sigmas, on
    SD3-normalised latents of the photos, conditioned on their captions (10% dropped)."""
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    latents, captions = _latent_set(pipe.vae, recipe, gen)
    # SD3-style latent normalisation from the data: shift = mean, scale = 1 / std.
    shift, std = latents.mean().item(), latents.std().item()
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    latents = (latents - shift) / std
    with torch.no_grad():
        uniq = sorted(set(captions)) + [""]
        embeds, pooled = pipe.encode_prompt(uniq, uniq, uniq, do_classifier_free_guidance=False)[::2]
    transformer = pipe.transformer
    losses = fit_flow(transformer, lambda xt, e, p, sigma: transformer(xt, e, p, sigma * 1000).sample,
                      latents, captions, uniq, embeds, pooled, recipe, gen, "tiny SD3 transformer", progress)
    return {"transformer_loss": losses, "latent_shift_factor": shift, "latent_scaling_factor": 1.0 / std}


def fit_flow(transformer, predict, latents: torch.Tensor, captions: list[str], prompts: list[str],
             embeds: torch.Tensor, pooled: torch.Tensor, recipe: TinyRecipe, gen: torch.Generator, desc: str,
             progress: bool) -> list[float]:
    """The pretraining loop: ``recipe.transformer_steps`` AdamW steps of rectified flow on
    ``latents`` with their captions' embeddings (``prompts[-1]`` is the empty prompt, used for 10%
    of items); ``predict(xt, embeds, pooled, sigma)`` is the model's velocity. The losses."""
    from tqdm.auto import tqdm

    index = {c: i for i, c in enumerate(prompts)}
    opt = torch.optim.AdamW(transformer.parameters(), lr=recipe.transformer_lr, weight_decay=0.0)
    transformer.train()
    losses = []
    for _ in tqdm(range(recipe.transformer_steps), desc=desc, disable=not progress):
        idx = torch.randint(0, len(latents), (recipe.transformer_batch,), generator=gen)
        x0 = latents[idx]
        keys = [index[captions[i]] if torch.rand((), generator=gen) > 0.1 else index[""] for i in idx.tolist()]
        sigma = torch.sigmoid(torch.randn(len(idx), generator=gen)).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        loss = F.mse_loss(predict(xt, embeds[keys], pooled[keys], sigma.flatten()), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    transformer.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------
def _assemble(recipe: TinyRecipe, workdir: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    captions = [json.loads(line)["text"] for line in (sample_photos("all") / "metadata.jsonl").read_text().splitlines()]
    clip_tok = build_clip_tokenizer(workdir / "_tok_clip")
    t5_tok = build_t5_tokenizer(captions, workdir / "_tok_t5")
    clip_l, clip_g, t5 = build_text_encoders(len(clip_tok), len(t5_tok))
    return StableDiffusion3Pipeline(
        transformer=build_transformer(recipe.transformer_layers), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=build_vae(), text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g, tokenizer_2=clip_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )


def remove_tokenizer_sources(folder: Path) -> None:
    """The scratch folders :func:`_assemble` built the tokenizers in (the pipeline saved its own)."""
    for scratch in ("_tok_clip", "_tok_t5"):
        shutil.rmtree(folder / scratch)


def build_tiny_sd35(path: Optional[str] = None, quick: bool = False, force: bool = False,
                    progress: bool = True, recipe: Optional[TinyRecipe] = None) -> Path:
    """Build (or reuse) the tiny pretrained SD3.5-architecture pipeline; returns its folder.

    ``path=None`` caches it in the user cache folder under a version key (``-quick`` for the
    quick recipe). A folder without its completion marker (a killed build) is rebuilt."""
    recipe = recipe or (TinyRecipe.quick() if quick else TinyRecipe())
    folder = Path(path) if path else cache_root() / (VERSION + ("-quick" if quick else ""))
    if is_complete(folder) and not force:
        return folder
    start = time.time()
    torch.manual_seed(recipe.seed)
    with atomic_dir(folder) as tmp:
        pipe = _assemble(recipe, tmp)
        log = {"version": VERSION, "recipe": asdict(recipe)}
        log.update(train_vae(pipe.vae, recipe, progress))
        log.update(train_transformer(pipe, recipe, progress))
        pipe.save_pretrained(tmp)
        remove_tokenizer_sources(tmp)
        log["seconds"] = time.time() - start
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        save_curves(tmp / "training_loss.png", {"VAE L1 + KL": log["vae_loss"], "flow matching": log["transformer_loss"]},
                    title=f"{VERSION}: held-out VAE PSNR {log['vae_heldout_psnr_db']:.1f} dB")
    if progress:
        t = log["transformer_loss"]
        head = sum(t[:5]) / max(len(t[:5]), 1)
        tail = sum(t[-5:]) / max(len(t[-5:]), 1)
        print(f"tiny SD3.5 pipeline at {folder}: VAE held-out PSNR {log['vae_heldout_psnr_db']:.1f} dB, "
              f"flow loss {head:.3f} -> {tail:.3f}, {log['seconds']:.0f} s")
    return folder


def build_command(build, module: str, description: str, argv=None) -> None:
    """The command line of a tiny-model module (``python -m davae_ext.training.<module>``): its
    folder, the quick recipe, a forced rebuild; runs ``build(folder, quick=, force=)``."""
    parser = argparse.ArgumentParser(prog=f"python -m davae_ext.training.{module}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None,
                        help="where to write the pipeline folder (default: the user cache, reused if complete)")
    parser.add_argument("--quick", action="store_true", help="the quick recipe the tests use (default: off)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete folder exists (default: off)")
    args = parser.parse_args(argv)
    build(args.output_dir, quick=args.quick, force=args.force)


def main(argv=None) -> None:
    build_command(build_tiny_sd35, "tiny", __doc__, argv)


if __name__ == "__main__":
    main()
