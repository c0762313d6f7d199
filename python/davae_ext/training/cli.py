"""The command lines of the scripts in ``train/`` and their argument checks.

A script parses with its parser here, then calls its ``check_*`` function before it builds, loads
or trains anything. Numbers are range-checked as they are parsed; the checks then look at the
paths (they exist and are the right kind: an image folder with a readable image, a model folder
with the files it needs) and at what the flags say together and with the models' configs, read
from their JSON files (no weights are loaded). Every error names the flag, the value and what was
expected, and exits with code 2, argparse's convention. This module imports no diffusers, so a
bad argument fails in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable, Optional

from .lora import FLUX_TARGETS
from .recipes import DEFAULT_RECIPES, RECIPES, describe, recipe_defaults, recipes_for

DEFAULT_PIPELINE = "outputs/finetune_sd35/pipeline"
DEFAULT_DIT_PIPELINE = "outputs/finetune_dit/pipeline"
DEFAULT_TRAIN_CROP = 128
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# ----------------------------------------------------------------------------------------------
# Value types: argparse reports "argument --flag: <message>" and exits with code 2
# ----------------------------------------------------------------------------------------------
def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def float_in(low: float, high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
             ) -> Callable[[str], float]:
    lo, hi = "(" if low_open else "[", ")" if high_open or high is None else "]"
    expected = f"a number in {lo}{low}, {'inf' if high is None else high}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = expected
    return parse


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)
RATE = float_in(0.0, low_open=True)  # learning rates, scales: > 0
WEIGHT = float_in(0.0)  # loss weights, clips: >= 0
PROBABILITY = float_in(0.0, 1.0)
DECAY = float_in(0.0, 1.0, high_open=True)  # EMA decay, dropout: [0, 1)


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------
def _parser(description: Optional[str]) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


class RecipeParser(argparse.ArgumentParser):
    """A parser whose defaults come from the ``--recipe`` named on the command line (or the default
    recipe): it looks for ``--recipe`` first, sets that recipe's defaults, then parses everything,
    so an explicit flag always wins over the recipe."""

    HELP = {
        "paper": "'paper' (the paper's equations and Table S1; the default for SD3, because on the embedded model it "
                 "trains the better DA-VAE at equal steps: 21.5 vs 20.4 dB held-out after 300 steps)",
        "released": "'released' (the authors' released SD3 code, to reproduce their checkpoints)",
        "imagenet": "'imagenet' (the released ImageNet / LightningDiT code, for class-conditional DiTs)",
    }

    def __init__(self, script: str, description: Optional[str], overrides: Optional[dict] = None):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        self.script = script
        self.overrides = overrides or {}  # defaults that no recipe changes (a model family's)
        names = recipes_for(script)
        self.default_recipe = DEFAULT_RECIPES[script]
        self.add_argument("--recipe", choices=names, default=self.default_recipe,
                          help="the defaults of every setting docs/recipes.md tables: "
                               + ", ".join(self.HELP[n] for n in names)
                               + f"; explicit flags override it (default: {self.default_recipe})")

    def parse_known_args(self, args=None, namespace=None):
        probe = argparse.ArgumentParser(add_help=False)
        probe.add_argument("--recipe", default=self.default_recipe)
        name = probe.parse_known_args(args)[0].recipe
        if name in recipes_for(self.script):  # an unknown name is reported by the full parse
            self.set_defaults(**recipe_defaults(self.script, name))
        self.set_defaults(**self.overrides)
        return super().parse_known_args(args, namespace)


def _by_recipe(script: str, key: str) -> str:
    return f"(default: by --recipe: {describe(script, key)})"


def add_run_arguments(p: argparse.ArgumentParser, output_dir: str, steps: int, batch_size: int) -> None:
    """The arguments :class:`~davae_ext.training.common.TrainingRun` reads, shared by both trainers
    (a recipe may set the gradient clip and skip threshold)."""
    a = p.add_argument
    script = getattr(p, "script", None)
    by_recipe = script is not None and "grad_clip" in RECIPES[DEFAULT_RECIPES[script]][script]
    a("--output-dir", default=output_dir, help=f"where everything is written (default: {output_dir})")
    a("--steps", type=POSITIVE, default=steps, help=f"optimizer steps (default: {steps})")
    a("--batch-size", type=POSITIVE, default=batch_size,
      help=f"global batch size, split over processes (default: {batch_size})")
    a("--grad-clip", type=WEIGHT, default=1.0, help="gradient-norm clip, 0 = off " + (
        _by_recipe(script, "grad_clip") if by_recipe else "(default: 1.0)"))
    a("--skip-grad-norm", type=WEIGHT, default=0.0,
      help="skip (do not apply) a step whose gradient norm is non-finite or above this; the weights, optimizer "
           "state and EMA stay as they were, the step is logged and counted; 0 = skip only non-finite steps " + (
               _by_recipe(script, "skip_grad_norm") if by_recipe else "(default: 0)"))
    a("--gradient-checkpointing", action="store_true", help="recompute activations in backward (default: off)")
    a("--checkpoint-every", type=POSITIVE, default=100, help="steps between checkpoints (default: 100)")
    a("--keep-checkpoints", type=POSITIVE, default=2, help="checkpoints kept (default: 2)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (default: off)")
    a("--seed", type=NON_NEGATIVE, default=0, help="seed of every batch, crop and noise draw (default: 0)")
    a("--no-progress", action="store_true", help="no tqdm progress bar (default: shown)")
    a("--quick-default", action="store_true", help=argparse.SUPPRESS)  # tests: the quick tiny models
    a("--stop-at", type=POSITIVE, default=None, help=argparse.SUPPRESS)  # tests: stop here as if killed
    a("--in-process", action="store_true", help=argparse.SUPPRESS)  # a run inside another run's main process


def train_vae_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = RecipeParser("train_vae", description)
    add_run_arguments(p, "outputs/train_vae", steps=600, batch_size=4)
    a = p.add_argument
    a("--base-vae", default=None, help="diffusers AutoencoderKL folder, or a pipeline folder with a 'vae' subfolder "
                                       "(default: the embedded tiny SD3.5 pipeline's VAE, built on first use)")
    a("--base-channels", type=POSITIVE, default=None,
      help="expected latent channels of the base VAE; checked (default: not checked)")
    a("--data", default=None, help="training image folder (default: the shipped photos, training split)")
    a("--eval-data", default=None, help="held-out image folder (default: the shipped photos, held-out split)")
    a("--resolution", type=POSITIVE, default=256, help="training / evaluation image size (default: 256)")
    a("--train-crop", type=POSITIVE, default=None,
      help="train on random crops of this size of the --resolution images (the model is convolutional; "
           f"at most --resolution) (default: {DEFAULT_TRAIN_CROP}, or --resolution when that is smaller)")
    a("--detail-channels", type=POSITIVE, default=None, help="D, a multiple of C (default: C, the base latent channels)")
    a("--order", choices=["base_first", "detail_first"], default="base_first", help="channel order (default: base_first)")
    a("--freeze-detail-trunk", action=argparse.BooleanOptionalAction, default=True,
      help="freeze the detail encoder's pretrained trunk (default: frozen, as the released SD3 recipe)")
    a("--init-from-base", action=argparse.BooleanOptionalAction, default=True,
      help="start the detail trunk and decoder from the pretrained weights (default: on)")
    a("--init-up-block", choices=["base_decoder", "random"], default="base_decoder",
      help="the decoder's new up block: starting as the base decoder's conv_in on the base channels (our "
           "choice), or the default random initialisation (the released code) (default: base_decoder)")
    a("--detail-dropout", type=DECAY,
      help="per-sample dropout of the detail latent at the decoder input, kept samples scaled by 1 / (1 - p) "
           + _by_recipe("train_vae", "detail_dropout"))
    a("--latent-norm", choices=["detail", "all"],
      help="which latent channels the diffusion model sees standardised with calibrated per-channel statistics: "
           "the detail channels (SD3: the base ones are the base VAE's shift / scale) or all "
           + _by_recipe("train_vae", "latent_norm"))
    a("--lr", type=RATE, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    a("--lr-warmup", type=NON_NEGATIVE, default=0, help="linear warm-up steps (default: 0)")
    a("--lr-schedule", choices=["constant", "cosine"], help="after the warm-up: constant, or cosine decay to 0 at "
                                                             "--steps " + _by_recipe("train_vae", "lr_schedule"))
    a("--recon-target", choices=["image", "base_reconstruction"],
      help="what L1 / LPIPS compare the output with: the image, or the base VAE's own reconstruction of it "
           "(encode, posterior mean, decode; the DA-VAE then learns to reproduce the base VAE's quality) "
           + _by_recipe("train_vae", "recon_target"))
    a("--image-range", choices=["signed", "unit"],
      help="the image range L1 is computed in: [-1, 1] ('signed') or [0, 1] ('unit', half the signed L1) "
           + _by_recipe("train_vae", "image_range"))
    a("--clamp-output", action=argparse.BooleanOptionalAction,
      help="clamp the decoded image to the image range during training " + _by_recipe("train_vae", "clamp_output"))
    a("--weight-decay", type=WEIGHT, default=1e-4, help="AdamW weight decay, not on biases and norms (default: 1e-4)")
    a("--l1-weight", type=WEIGHT, help="L1 weight " + _by_recipe("train_vae", "l1_weight"))
    a("--kl-weight", type=WEIGHT, help="KL weight " + _by_recipe("train_vae", "kl_weight"))
    a("--kl-form", choices=["sum", "mean"],
      help="KL normalisation: 'sum' = 0.5*sum over C,H,W, batch mean (SD3); 'mean' = element mean, no 1/2 "
           "(ImageNet) " + _by_recipe("train_vae", "kl_form"))
    a("--align-weight", type=WEIGHT,
      help="alignment loss weight; 0 = the ablation without it " + _by_recipe("train_vae", "align_weight"))
    a("--align-mode", choices=["constant", "adaptive"],
      help="constant weight (SD3) or weight x the gradient-norm ratio at the encoder's last layer (ImageNet) "
           + _by_recipe("train_vae", "align_mode"))
    a("--lpips-weights", default=None,
      help="local LPIPS-VGG16 weights (file or folder); enables the perceptual loss (default: off)")
    a("--lpips-weight", type=WEIGHT, help="perceptual loss weight when enabled " + _by_recipe("train_vae", "lpips_weight"))
    a("--gan", action=argparse.BooleanOptionalAction,
      help="add a PatchGAN hinge loss from --gan-start " + _by_recipe("train_vae", "gan"))
    a("--gan-weight", type=WEIGHT, default=0.1, help="adversarial weight, times the adaptive ratio (default: 0.1)")
    a("--gan-start", type=NON_NEGATIVE, default=5001, help="step from which the GAN terms are on (default: 5001)")
    a("--disc-lr", type=RATE, default=1e-4, help="discriminator learning rate (default: 1e-4)")
    a("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="autocast precision (default: no)")
    a("--fused", action="store_true",
      help="concatenation and alignment loss through the fused kernels (default: reference PyTorch)")
    a("--eval-images", type=POSITIVE, default=8, help="held-out images evaluated and shown (default: 8)")
    a("--no-eval", action="store_true", help="skip the final evaluation, grid and statistics (default: run them)")
    return p


def finetune_parser(description: Optional[str] = None, family: str = "sd3") -> argparse.ArgumentParser:
    """finetune_sd35.py's arguments, or finetune_flux.py's with ``family="flux"`` (its LoRA
    targets, guidance, text length and shift)."""
    flux = family == "flux"
    if family not in ("sd3", "flux"):
        raise ValueError(f"finetune_parser: 'family' must be 'sd3' or 'flux', got {family!r}")
    # FLUX: the dynamic shift (None until the run knows its token count) and no caption dropout
    # (a guidance-distilled model samples without an unconditional branch).
    p = RecipeParser("finetune", description, overrides={"shift": None, "caption_dropout": 0.0} if flux else None)
    add_run_arguments(p, f"outputs/finetune_{'flux' if flux else 'sd35'}", steps=300, batch_size=8)
    a = p.add_argument
    a("--model", default=None,
      help="diffusers FLUX.1 pipeline folder (default: the embedded tiny FLUX pipeline, built on first use)" if flux
      else "diffusers SD3 / SD3.5 pipeline folder (default: the embedded tiny SD3.5 pipeline, built on first use)")
    a("--davae", default=None, help="DA-VAE folder from train/train_vae.py (default: one trained on first use on "
                                    "--model's VAE by train_vae.py, 300 steps, with --mixed-precision, and cached)")
    a("--data", default=None, help="image folder with captions (default: the shipped photos, training split)")
    a("--synthetic", type=NON_NEGATIVE, default=0,
      help="first generate this many training images with the base pipeline (default: 0 = use --data)")
    a("--prompts", default=None,
      help="prompt file for --synthetic, one per line (default: the shipped photos' captions)")
    a("--resolution", type=POSITIVE, default=None,
      help="training image size (default: 1024, a 32 x 32 token grid; 256 on the embedded model)" if flux else
      "training image size (default: the transformer's sample size x the DA-VAE factor)")
    a("--crops-per-image", type=POSITIVE, default=4, help="random crops / flips cached per image (default: 4)")
    a("--lr", type=RATE, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    a("--full", action="store_true", help="train every transformer weight instead of LoRA (default: LoRA)")
    a("--lora-rank", type=POSITIVE, default=256, help="LoRA rank (default: 256)")
    a("--lora-alpha", type=RATE, default=256, help="LoRA alpha (default: 256)")
    targets = ",".join(FLUX_TARGETS) if flux else "to_q,to_k,to_v,to_out.0,ff.net.2,norm1.linear"
    a("--lora-targets", default=targets, help=f"comma-separated LoRA target modules (default: {targets})")
    a("--shift", type=RATE, help="timestep shift of the training schedule " + (
        "(default: FLUX's dynamic shift at the training token count, exp(mu), as its pipeline samples)" if flux
        else _by_recipe("finetune", "shift")))
    a("--caption-dropout", type=PROBABILITY, default=0.1,
      help=f"probability of the empty prompt (default: {0.0 if flux else 0.1})")
    if flux:
        a("--train-guidance", type=WEIGHT, default=1.0,
          help="guidance value a guidance-distilled model (guidance_embeds) is trained with (default: 1.0)")
        a("--max-sequence-length", type=POSITIVE, default=None,
          help="T5 tokens per prompt, in training and in the saved pipeline's sampling (default: 512, FLUX.1-dev's; "
               "64 on the embedded model)")
    a("--n-warm", type=NON_NEGATIVE, default=None, help="N_warm of Eq. 12 in steps (default: min(10000, steps / 2))")
    a("--loss-mode", choices=["velocity", "x0_min_snr"],
      help="Eq. 13 on the velocity, or the released code's x0 + min-SNR variant " + _by_recipe("finetune", "loss_mode"))
    a("--min-snr-gamma", type=RATE, help="gamma of --loss-mode x0_min_snr " + _by_recipe("finetune", "min_snr_gamma"))
    a("--timestep-rounding", choices=["none", "floor"],
      help="the timestep the transformer and min-SNR see: 1000 sigma, or floor(1000 sigma) as the released code "
           + _by_recipe("finetune", "timestep_rounding"))
    a("--trainable-dtype", choices=["auto", "float32", "bfloat16"],
      help="dtype of the trained weights (LoRA, patch embedder, head): 'auto' = bfloat16 under --mixed-precision "
           "bf16, else float32 " + _by_recipe("finetune", "trainable_dtype"))
    a("--frozen-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
      help="dtype of the frozen transformer weights under LoRA: 'auto' = bfloat16 under --mixed-precision bf16 "
           "(autocast computes with them in bf16 anyway; half the memory: 4.5 GB instead of 9 GB for SD3.5-Medium), "
           "else float32 (default: auto)")
    a("--ema-decay", type=DECAY, default=0.999,
      help="EMA decay of the trainable weights, used for sampling (default: 0.999)")
    a("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
      help="autocast precision, also of the default DA-VAE's training (default: no)")
    a("--fused", action="store_true",
      help="latent concatenation through the fused kernel and the widened x_embedder / proj_out as one GEMM each "
           "(default: reference PyTorch)" if flux else
      "patch embedding and latent concatenation through the fused kernels (default: reference PyTorch)")
    a("--nan-at-step", type=NON_NEGATIVE, default=None, help=argparse.SUPPRESS)  # tests: a NaN batch at this step
    a("--sample-steps", type=POSITIVE, default=20, help="denoising steps of the final sample grid (default: 20)")
    a("--sample-prompts", type=POSITIVE, default=4,
      help="how many of the four fixed prompts the final grid draws (default: 4)")
    if flux:
        a("--guidance", type=WEIGHT, default=3.5,
          help="guidance-embedding value of the final sample grid, also the pipeline's default (default: 3.5)")
    else:
        a("--guidance", type=WEIGHT, default=2.5, help="CFG scale of the final sample grid (default: 2.5)")
        a("--negative-prompt", default=None,
          help="negative prompt of the final sample grid, also stored as the pipeline's default (default: by "
               "--recipe: " + "; ".join(f"{n}: {RECIPES[n]['sampling']['negative_prompt']!r}"
                                        for n in recipes_for("sampling")) + ")")
    a("--no-sample", action="store_true", help="skip the final sample grid and pipeline folder (default: write them)")
    return p


def finetune_dit_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = RecipeParser("finetune_dit", description)
    add_run_arguments(p, "outputs/finetune_dit", steps=300, batch_size=16)
    a = p.add_argument
    a("--model", default=None,
      help="pretrained class-conditional pipeline folder: 'transformer' (a diffusers DiTTransformer2DModel) and 'vae' "
           "(AutoencoderKL) subfolders, optional latent_stats.json / classes.json (default: the embedded tiny DiT, "
           "built on first use)")
    a("--davae", default=None, help="DA-VAE folder from train/train_vae.py on --model's VAE (default: one trained on first "
                                    "use by train_vae.py --recipe imagenet with D = 3 C, 300 steps, and cached)")
    a("--data", default=None, help="class-labelled image folder, one subfolder per class as torchvision's ImageFolder "
                                   "(default: crops of six shipped photos, one class each)")
    a("--resolution", type=POSITIVE, default=None,
      help="training image size (default: the transformer's sample size x the DA-VAE factor)")
    a("--crops-per-image", type=POSITIVE, default=4, help="random crops / flips cached per image (default: 4)")
    a("--init", choices=["zero", "random", "repeat_average"], default="zero",
      help="the widened embedder's and head's new weights: zero (the paper's warm start), random (the paper's "
           "'w/o zero-init' ablation) or repeat_average (default: zero)")
    a("--lr", type=RATE, help="AdamW learning rate " + _by_recipe("finetune_dit", "lr"))
    a("--adam-beta2", type=DECAY, help="AdamW beta2 " + _by_recipe("finetune_dit", "adam_beta2"))
    a("--shift", type=RATE, help="timestep shift of the logit-normal training noise levels, 1 = none "
                                 + _by_recipe("finetune_dit", "shift"))
    a("--label-dropout", type=PROBABILITY, help="probability of the null class (for CFG) "
                                                + _by_recipe("finetune_dit", "label_dropout"))
    a("--cosine-weight", type=WEIGHT, help="weight of the cosine velocity term mean(1 - cos(v_hat, v)); 0 = off "
                                           + _by_recipe("finetune_dit", "cosine_weight"))
    a("--n-warm", type=NON_NEGATIVE, default=None,
      help="N_warm of Eq. 12 in steps; 0 = no loss schedule (detail weight 1 from step 0) "
           "(default: min(20000, steps / 2); the ImageNet code: 20000)")
    a("--detail-latent", choices=["mode", "sample"],
      help="the DA-VAE detail latent the DiT trains on (the base is always the posterior mean) "
           + _by_recipe("finetune_dit", "detail_latent"))
    a("--detail-noise", type=WEIGHT, default=0.0,
      help="std of N(0, 1) noise added to the raw detail latent when caching (the ImageNet inference wrapper: 1.0) "
           "(default: 0)")
    a("--ema-decay", type=DECAY, default=0.99,
      help="EMA decay of the weights, used for sampling (default: 0.99 for runs of hundreds of steps; the ImageNet "
           "code: 0.999 over 140k steps)")
    a("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
      help="autocast precision, also of the default DA-VAE's training (default: no)")
    a("--fused", action="store_true",
      help="patch embedding and latent concatenation through the fused kernels (default: reference PyTorch)")
    a("--sample-steps", type=POSITIVE, default=50, help="Euler steps of the final sample grid (default: 50; the "
                                                       "ImageNet code: 250)")
    a("--guidance", type=WEIGHT, default=4.0, help="CFG scale of the final sample grid (default: 4.0)")
    a("--samples-per-class", type=POSITIVE, default=4, help="images per class in samples.png (default: 4)")
    a("--no-sample", action="store_true", help="skip the final sample grid and pipeline folder (default: write them)")
    return p


def sample_dit_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = _parser(description)
    a = p.add_argument
    a("--pipeline", default=DEFAULT_DIT_PIPELINE,
      help=f"DAVAEDiTPipeline folder (default: {DEFAULT_DIT_PIPELINE}, built by the default fine-tuning run if missing)")
    a("--classes", default=None, help="comma-separated class indices or names (default: every class)")
    a("--per-class", type=POSITIVE, default=4, help="images per class (default: 4)")
    a("--seed", type=NON_NEGATIVE, default=0, help="image k of a class uses seed + k (default: 0)")
    a("--steps", type=POSITIVE, default=None, help="Euler steps (default: the pipeline's, else 50)")
    a("--guidance", type=WEIGHT, default=None, help="CFG scale (default: the pipeline's, else 4.0)")
    a("--cfg-start", type=PROBABILITY, default=None, help="CFG from this t (0 = noise) on (default: the pipeline's, else 0.2)")
    a("--time-warp", type=RATE, default=None, help="time warp s of the step grid, 1 = uniform (default: the pipeline's, else 0.3)")
    a("--resolution", type=POSITIVE, default=None, help="output size (default: the pipeline's own)")
    a("--batch-size", type=POSITIVE, default=8, help="images per pipeline call (default: 8)")
    a("--fused", action=argparse.BooleanOptionalAction, default=True, help="fused patch embedding and head (default: on)")
    a("--compare-native", action="store_true",
      help="also sample with the pretrained native pipeline at the same output resolution (default: off)")
    a("--base-model", default=None, help="the native pipeline for --compare-native (default: the one the fine-tuning used)")
    a("--device", default=_device_default(), help="device (default: cuda if available)")
    a("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
      help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    a("--output-dir", default="outputs/sample_dit", help="where images and samples.json go (default: outputs/sample_dit)")
    a("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p


def eval_dit_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = _parser(description)
    a = p.add_argument
    a("--pipeline", default=DEFAULT_DIT_PIPELINE, help=f"DAVAEDiTPipeline folder (default: {DEFAULT_DIT_PIPELINE})")
    a("--data", default=None, help="class-labelled real images (default: the shipped photo classes)")
    a("--inception", default=None,
      help="local TorchScript Inception-v3 feature extractor for FID (e.g. the StyleGAN2-ADA / EDM "
           "'inception-2015-12-05.pt'; uint8 [N, 3, H, W] images in, [N, 2048] features out); nothing is downloaded "
           "(default: none; required unless --no-fid)")
    a("--no-fid", action="store_true", help="only the reconstruction statistics (default: FID too)")
    a("--per-class", type=POSITIVE, default=16, help="generated images per class for FID (default: 16)")
    a("--steps", type=POSITIVE, default=None, help="Euler steps (default: the pipeline's)")
    a("--guidance", type=WEIGHT, default=None, help="CFG scale (default: the pipeline's)")
    a("--resolution", type=POSITIVE, default=None, help="image size (default: the pipeline's own)")
    a("--batch-size", type=POSITIVE, default=16, help="images per forward pass (default: 16)")
    a("--seed", type=NON_NEGATIVE, default=0, help="seed of the generated images (default: 0)")
    a("--device", default=_device_default(), help="device (default: cuda if available)")
    a("--output-dir", default="outputs/eval_dit", help="where eval.json and the statistics go (default: outputs/eval_dit)")
    a("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p


def _device_default() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def eval_vae_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = _parser(description)
    a = p.add_argument
    a("--davae", default="outputs/train_vae/davae",
      help="DA-VAE folder written by train_vae.py (default: outputs/train_vae/davae)")
    a("--data", default=None, help="held-out image folder (default: the shipped photos' held-out split)")
    a("--resolution", type=POSITIVE, default=256, help="evaluation image size, centre crops (default: 256)")
    a("--limit", type=POSITIVE, default=None, help="at most this many images (default: all)")
    a("--batch-size", type=POSITIVE, default=4, help="images per forward pass (default: 4)")
    a("--lpips-weights", default=None, help="local LPIPS-VGG16 weights; adds LPIPS (default: off)")
    a("--device", default=_device_default(), help="device (default: cuda if available)")
    a("--output-dir", default="outputs/eval_vae", help="where eval.json and the grid go (default: outputs/eval_vae)")
    return p


def synthetic_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = _parser(description)
    a = p.add_argument
    a("--model", default=None, help="SD3 pipeline folder (default: the embedded tiny SD3.5 pipeline)")
    a("--prompts", default=None, help="prompt file, one per line, cycled (default: four fixed prompts)")
    a("--count", type=POSITIVE, default=16, help="number of images (default: 16)")
    a("--resolution", type=POSITIVE, default=None, help="image size (default: the pipeline's own)")
    a("--steps", type=POSITIVE, default=20, help="denoising steps (default: 20)")
    a("--guidance", type=WEIGHT, default=2.5, help="CFG scale (default: 2.5)")
    a("--batch-size", type=POSITIVE, default=4, help="images per call (default: 4)")
    a("--seed", type=NON_NEGATIVE, default=0, help="sample i uses seed + i (default: 0)")
    a("--device", default=_device_default(), help="device (default: cuda if available)")
    a("--output-dir", default="outputs/synthetic", help="image folder to write (default: outputs/synthetic)")
    a("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return p


def sample_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = _parser(description)
    a = p.add_argument
    a("--pipeline", default=DEFAULT_PIPELINE, help=f"DAVAEStableDiffusion3Pipeline or DAVAEFluxPipeline folder (default: {DEFAULT_PIPELINE}, "
                                                   "built by the default fine-tuning run if missing)")
    a("--prompt", action="append", default=None, help="a prompt (repeatable) (default: four fixed prompts)")
    a("--prompts", default=None, help="prompt file, one per line (default: none)")
    a("--negative-prompt", default=None,
      help="negative prompt for every image, '' for none (default: the pipeline's, from its training recipe)")
    a("--seed", type=NON_NEGATIVE, default=0, help="seed of image i is seed + i (default: 0)")
    a("--steps", type=POSITIVE, default=None, help="denoising steps (default: the pipeline's, else 30)")
    a("--guidance", type=WEIGHT, default=None, help="classifier-free guidance scale (default: the pipeline's, else 2.5)")
    a("--shift", type=RATE, default=None,
      help="a fixed scheduler timestep shift (default: the pipeline's: FLUX's from the token count, SD3's stored "
           "shift, else 4.0)")
    a("--resolution", type=POSITIVE, default=None,
      help="output size, e.g. 1024 or 2048 on SD3.5-M (default: the pipeline's own size)")
    a("--batch-size", type=POSITIVE, default=4, help="images per pipeline call (default: 4)")
    a("--fused", action=argparse.BooleanOptionalAction, default=True,
      help="fused patch embedding and one-GEMM head (default: on)")
    a("--compare-native", action="store_true",
      help="also sample with the base pipeline at the same resolution (default: off)")
    a("--base-model", default=None,
      help="base SD3 pipeline for --compare-native (default: the one the fine-tuning run used)")
    a("--device", default=_device_default(), help="device (default: cuda if available)")
    a("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
      help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    a("--output-dir", default="outputs/sample", help="where images and samples.json go (default: outputs/sample)")
    a("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p


# ----------------------------------------------------------------------------------------------
# Checks of paths and of flags together
# ----------------------------------------------------------------------------------------------
class _Checks:
    """Checks against one parser: :meth:`fail` prints the usage and the error and exits with 2."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser

    def fail(self, flag: str, value, expected: str):
        """Usage and ``<flag> <value>: <expected>`` on stderr, exit code 2 (``value`` None: a switch)."""
        self.parser.error(f"{flag}: {expected}" if value is None else f"{flag} {value!r}: {expected}")

    def _json(self, flag: str, value, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.fail(flag, value, f"{path} is not readable JSON ({type(exc).__name__}: {exc})")

    def run_arguments(self, args) -> None:
        """The arguments of :func:`add_run_arguments`, together."""
        self.batch_over_processes(args.batch_size)
        if args.stop_at is not None and args.stop_at > args.steps:
            self.fail("--stop-at", args.stop_at, f"at most --steps {args.steps}")
        if args.resume:
            self.resumable(args.output_dir)

    def file(self, flag: str, value: Optional[str]) -> None:
        if value is not None and not os.path.exists(value):
            self.fail(flag, value, "expected an existing file or folder (nothing is downloaded)")

    def prompts(self, flag: str, value: Optional[str]) -> None:
        if value is None:
            return
        if not os.path.isfile(value):
            self.fail(flag, value, "expected a text file with one prompt per line")
        if not any(line.strip() for line in Path(value).read_text(errors="replace").splitlines()):
            self.fail(flag, value, "expected at least one prompt; the file has none")

    def image_folder(self, flag: str, value: Optional[str]) -> None:
        """A folder holding at least one image PIL can decode (found at the first readable one)."""
        if value is None:
            return
        folder = Path(value)
        if not folder.is_dir():
            self.fail(flag, value, "expected an image folder; it does not exist" if not folder.exists()
                      else "expected an image folder, got a file")
        from PIL import Image

        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for path in candidates:
            try:
                with Image.open(path) as im:
                    im.convert("RGB").load()
                return
            except Exception:  # unreadable: the dataset skips it with a warning
                continue
        found = f"{len(candidates)} image files, none readable" if candidates else "no image files"
        self.fail(flag, value, f"expected a folder with at least one readable image "
                               f"({', '.join(IMAGE_EXTENSIONS)}); it holds {found}")

    def _weights(self, flag: str, value, folder: Path) -> None:
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            self.fail(flag, value, f"{folder} has a config but no weights ({' or '.join(WEIGHT_FILES)})")

    def vae(self, flag: str, value: str) -> dict:
        """An AutoencoderKL folder, or a pipeline folder with a 'vae' subfolder: its config."""
        if not os.path.isdir(value):
            self.fail(flag, value, "expected a diffusers AutoencoderKL folder or a pipeline folder; it does not exist")
        for folder in (Path(value), Path(value) / "vae"):
            if (folder / "config.json").is_file():
                config = self._json(flag, value, folder / "config.json")
                if config.get("_class_name") == "AutoencoderKL":
                    self._weights(flag, value, folder)
                    return config
        self.fail(flag, value, "expected a diffusers AutoencoderKL folder, or a pipeline folder with a 'vae' "
                               "subfolder holding one")

    def sd3_pipeline(self, flag: str, value: str) -> tuple[dict, dict]:
        """An SD3 pipeline folder: its transformer's and VAE's configs."""
        return self._pipeline(flag, value, "StableDiffusion3Pipeline", "SD3Transformer2DModel", "an")

    def flux_pipeline(self, flag: str, value: str) -> tuple[dict, dict]:
        """A FLUX pipeline folder: its transformer's and VAE's configs."""
        return self._pipeline(flag, value, "FluxPipeline", "FluxTransformer2DModel", "a")

    def _pipeline(self, flag: str, value: str, pipeline: str, transformer_cls: str,
                  article: str) -> tuple[dict, dict]:
        root = Path(value)
        if not (root / "model_index.json").is_file():
            self.fail(flag, value, "expected a diffusers pipeline folder (with model_index.json)")
        cls = self._json(flag, value, root / "model_index.json").get("_class_name", "")
        tcfg = root / "transformer" / "config.json"
        transformer = self._json(flag, value, tcfg) if tcfg.is_file() else {}
        if pipeline.removesuffix("Pipeline") not in cls or transformer.get("_class_name") != transformer_cls:
            self.fail(flag, value, f"expected a {pipeline} with {article} {transformer_cls}; "
                                   f"model_index.json names {cls!r}, the transformer is "
                                   f"{transformer.get('_class_name', 'missing')!r}")
        self._weights(flag, value, root / "transformer")
        return transformer, self.vae(flag, value)

    def davae(self, flag: str, value: str) -> dict:
        """A DA-VAE folder written by train_vae.py: its config."""
        cfg = Path(value) / "config.json"
        if not cfg.is_file():
            self.fail(flag, value, "expected a DA-VAE folder (config.json + weights); train one with train/train_vae.py")
        config = self._json(flag, value, cfg)
        if config.get("_class_name") != "DAVAE":
            self.fail(flag, value, f"expected a DA-VAE folder; its config.json is a {config.get('_class_name')!r}")
        self._weights(flag, value, Path(value))
        return config

    def davae_pipeline(self, flag: str, value: str, written_by: str = "train/finetune_sd35.py") -> tuple[dict, dict]:
        """A DA-VAE pipeline folder (``DAVAEStableDiffusion3Pipeline`` or, written by
        finetune_dit.py, ``DAVAEDiTPipeline``): its transformer's and DA-VAE's configs."""
        root = Path(value)
        if not (root / "model_index.json").is_file():
            self.fail(flag, value, f"expected a pipeline folder (with model_index.json) written by {written_by}")
        vae_entry = self._json(flag, value, root / "model_index.json").get("vae", [None, None])
        if vae_entry[1] != "DAVAE":
            self.fail(flag, value, f"expected a pipeline with a DA-VAE (written by {written_by}); its vae is {vae_entry}")
        transformer = self._json(flag, value, root / "transformer" / "config.json")
        return transformer, self.davae(flag, str(root / "vae"))

    def class_folder(self, flag: str, value: Optional[str]) -> None:
        """A folder with one subfolder of images per class, at least one of them readable."""
        if value is None:
            return
        folder = Path(value)
        if not folder.is_dir():
            self.fail(flag, value, "expected a class-labelled image folder; it does not exist")
        classes = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if not classes:
            self.fail(flag, value, "expected a class-labelled image folder: one subfolder of images per class "
                                   "(root/<class>/<image>, as torchvision's ImageFolder); it has no subfolders")
        for sub in sorted(classes):
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.iterdir()):
                return
        self.fail(flag, value, f"expected images in its class subfolders; none of its {len(classes)} subfolders holds any")

    def dit_model(self, flag: str, value: str) -> tuple[dict, dict]:
        """A class-conditional pipeline folder: its DiT transformer's and VAE's configs."""
        root = Path(value)
        tcfg = root / "transformer" / "config.json"
        transformer = self._json(flag, value, tcfg) if tcfg.is_file() else {}
        if transformer.get("_class_name") != "DiTTransformer2DModel":
            self.fail(flag, value, "expected a folder with a 'transformer' subfolder holding a diffusers "
                                   f"DiTTransformer2DModel; found {transformer.get('_class_name', 'none')!r}")
        self._weights(flag, value, root / "transformer")
        C = transformer["in_channels"]
        out = transformer.get("out_channels") or C
        if out not in (C, 2 * C):
            self.fail(flag, value, f"a DiT whose head predicts C = {C} channels (or 2C with a learned sigma); its "
                                   f"out_channels is {out}")
        vae = self.vae(flag, value)
        if vae["latent_channels"] != C:
            self.fail(flag, value, f"a VAE with the transformer's {C} latent channels; it has {vae['latent_channels']}")
        return transformer, vae

    def resumable(self, output_dir: str) -> None:
        from .common import CHECKPOINT_RE

        folder = Path(output_dir) / "checkpoints"
        if not folder.is_dir() or not any(CHECKPOINT_RE.match(p.name) for p in folder.iterdir()):
            self.fail("--resume", None, f"expected a checkpoint (step_*.pt) in {folder}; --output-dir "
                                        f"{output_dir!r} holds none (drop --resume to start from step 0)")

    def multiple(self, flag: str, value: Optional[int], of: int, why: str) -> None:
        if value is not None and value % of:
            self.fail(flag, value, f"expected a multiple of {of} ({why})")

    def batch_over_processes(self, batch_size: int) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.multiple("--batch-size", batch_size, world, f"split over the {world} processes")


def vae_factor(vae_config: dict) -> int:
    """Image pixels per latent cell of an AutoencoderKL config."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def davae_factor(davae_config: dict) -> int:
    return vae_factor(davae_config["base_vae_config"]) * davae_config.get("scale", 2)


def train_crop(args: argparse.Namespace) -> int:
    """The crop size train_vae.py trains on: --train-crop, else the default or --resolution."""
    return args.train_crop or min(DEFAULT_TRAIN_CROP, args.resolution)


def _tiny_configs() -> tuple[dict, dict]:
    from .tiny import TRANSFORMER_CONFIG, VAE_CONFIG

    return dict(TRANSFORMER_CONFIG), dict(VAE_CONFIG)


def check_train_vae(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    vae = c.vae("--base-vae", args.base_vae) if args.base_vae else _tiny_configs()[1]
    C = vae["latent_channels"]
    if args.base_channels is not None and args.base_channels != C:
        c.fail("--base-channels", args.base_channels, f"the base VAE has {C} latent channels")
    c.multiple("--detail-channels", args.detail_channels, C, f"the base VAE's {C} latent channels: "
               "the projection averages groups of D / C")
    f = vae_factor(vae) * 2
    c.multiple("--resolution", args.resolution, f, "the DA-VAE's spatial factor: base VAE factor x 2")
    if args.train_crop is not None and args.train_crop > args.resolution:
        c.fail("--train-crop", args.train_crop, f"at most --resolution {args.resolution}")
    c.multiple("--train-crop", train_crop(args), f, "the DA-VAE's spatial factor: base VAE factor x 2")
    c.image_folder("--data", args.data)
    c.image_folder("--eval-data", args.eval_data)
    c.file("--lpips-weights", args.lpips_weights)
    c.run_arguments(args)
    return args


def _tiny_flux_configs() -> tuple[dict, dict]:
    from .tiny import VAE_CONFIG
    from .tiny_flux import TRANSFORMER_CONFIG

    return dict(TRANSFORMER_CONFIG), dict(VAE_CONFIG)


def check_finetune(parser: argparse.ArgumentParser, args: argparse.Namespace, family: str = "sd3") -> argparse.Namespace:
    c = _Checks(parser)
    if family == "flux":
        transformer, vae = c.flux_pipeline("--model", args.model) if args.model else _tiny_flux_configs()
        channels, patch = transformer["in_channels"] // 4, 2  # FLUX packs 2 x 2 latent pixels per token
    else:
        transformer, vae = c.sd3_pipeline("--model", args.model) if args.model else _tiny_configs()
        channels, patch = transformer["in_channels"], transformer["patch_size"]
    if not [t for t in args.lora_targets.split(",") if t.strip()] and not args.full:
        c.fail("--lora-targets", args.lora_targets, "expected at least one module name")
    for flag, value in (("--trainable-dtype", args.trainable_dtype), ("--frozen-dtype", args.frozen_dtype)):
        if value == "bfloat16" and args.mixed_precision != "bf16":
            c.fail(flag, value, "bfloat16 weights need --mixed-precision bf16 (the forward pass runs in float32 under "
                                f"--mixed-precision {args.mixed_precision})")
    if args.davae:
        davae = c.davae("--davae", args.davae)
        C = davae["base_vae_config"]["latent_channels"]
        if C != channels:
            c.fail("--davae", args.davae, f"a DA-VAE with {channels} base channels, the latent "
                                          f"channels of the transformer of --model; it has {C}")
        if davae.get("detail_mean") is None:
            c.fail("--davae", args.davae, "a DA-VAE with detail latent statistics (train_vae.py calibrates them "
                                          "at the end; or run DAVAE.calibrate_latent_stats)")
        factor = davae_factor(davae)
    else:
        factor = vae_factor(vae) * 2
    c.multiple("--resolution", args.resolution, factor * patch, f"DA-VAE factor {factor} x patch size {patch}")
    if args.synthetic == 0:
        c.image_folder("--data", args.data)
    c.prompts("--prompts", args.prompts)
    c.run_arguments(args)
    return args


def check_eval_vae(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    davae = c.davae("--davae", args.davae)
    c.multiple("--resolution", args.resolution, davae_factor(davae), "the DA-VAE's spatial factor")
    c.image_folder("--data", args.data)
    c.file("--lpips-weights", args.lpips_weights)
    _device(c, args.device)
    return args


def check_synthetic(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    transformer, vae = c.sd3_pipeline("--model", args.model) if args.model else _tiny_configs()
    c.multiple("--resolution", args.resolution, vae_factor(vae) * transformer["patch_size"],
               f"VAE factor {vae_factor(vae)} x patch size {transformer['patch_size']}")
    c.prompts("--prompts", args.prompts)
    _device(c, args.device)
    return args


def check_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    flux = False  # the default pipeline, not built yet, is finetune_sd35.py's
    if args.pipeline != DEFAULT_PIPELINE or (Path(args.pipeline) / "model_index.json").is_file():
        transformer, davae = c.davae_pipeline("--pipeline", args.pipeline)
        flux = transformer.get("_class_name") == "DAVAEFluxTransformer2DModel"
        multiple = davae_factor(davae) * (2 if flux else transformer["patch_size"])  # FLUX packs 2 x 2
        c.multiple("--resolution", args.resolution, multiple, "the DA-VAE's spatial factor x the patch size")
    c.prompts("--prompts", args.prompts)
    if args.base_model is not None:
        (c.flux_pipeline if flux else c.sd3_pipeline)("--base-model", args.base_model)
    _device(c, args.device)
    return args


def _tiny_dit_configs() -> tuple[dict, dict]:
    from .tiny import VAE_CONFIG
    from .tiny_dit import TRANSFORMER_CONFIG

    return dict(TRANSFORMER_CONFIG, num_embeds_ada_norm=6), dict(VAE_CONFIG)


def check_finetune_dit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    transformer, vae = c.dit_model("--model", args.model) if args.model else _tiny_dit_configs()
    C, p = transformer["in_channels"], transformer["patch_size"]
    if args.davae:
        davae = c.davae("--davae", args.davae)
        if davae["base_vae_config"]["latent_channels"] != C:
            c.fail("--davae", args.davae, f"a DA-VAE with {C} base channels, the latent channels of the transformer of "
                                          f"--model; it has {davae['base_vae_config']['latent_channels']}")
        if davae.get("detail_mean") is None:
            c.fail("--davae", args.davae, "a DA-VAE with detail latent statistics (train_vae.py calibrates them "
                                          "at the end; or run DAVAE.calibrate_latent_stats)")
        factor = davae_factor(davae)
    else:
        factor = vae_factor(vae) * 2
    c.multiple("--resolution", args.resolution, factor * p, f"DA-VAE factor {factor} x patch size {p}")
    c.class_folder("--data", args.data)
    c.run_arguments(args)
    return args


def check_sample_dit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    if args.pipeline != DEFAULT_DIT_PIPELINE or (Path(args.pipeline) / "model_index.json").is_file():
        transformer, davae = c.davae_pipeline("--pipeline", args.pipeline, "train/finetune_dit.py")
        c.multiple("--resolution", args.resolution, davae_factor(davae) * transformer["patch_size"],
                   "the DA-VAE's spatial factor x the patch size")
    if args.base_model is not None:
        c.dit_model("--base-model", args.base_model)
    _device(c, args.device)
    return args


def check_eval_dit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    c = _Checks(parser)
    if not args.no_fid and args.inception is None:
        c.fail("--inception", None, "FID needs a local Inception-v3 feature extractor (TorchScript, e.g. "
                                    "inception-2015-12-05.pt); nothing is downloaded. Give --inception PATH, or "
                                    "--no-fid for the reconstruction statistics alone")
    c.file("--inception", args.inception)
    transformer, davae = c.davae_pipeline("--pipeline", args.pipeline, "train/finetune_dit.py")
    c.multiple("--resolution", args.resolution, davae_factor(davae) * transformer["patch_size"],
               "the DA-VAE's spatial factor x the patch size")
    c.class_folder("--data", args.data)
    _device(c, args.device)
    return args


def _device(c: _Checks, device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        c.fail("--device", device, "expected a torch device such as cpu, cuda or cuda:1")
    if dev.type == "cuda" and not torch.cuda.is_available():
        c.fail("--device", device, "no CUDA device is available here")


# ----------------------------------------------------------------------------------------------
# The end of a script
# ----------------------------------------------------------------------------------------------
def exit_launched_process() -> None:
    """Ends a process of a multi-process launch (``WORLD_SIZE`` > 1, set by ``torchrun`` and
    ``accelerate launch``) whose run has finished, saved everything and destroyed its process
    group: logging and the standard streams flushed, then ``os._exit(0)``, without the
    interpreter's shutdown. torch keeps gloo's worker and transport threads alive after
    ``destroy_process_group``; a C++ thread that needs the GIL once that shutdown has begun is
    ended by Python mid-destructor, and the process aborts ("terminate called without an active
    exception", SIGABRT), failing a run whose outputs were complete. A single process returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
