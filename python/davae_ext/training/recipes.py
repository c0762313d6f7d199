"""Named recipes: every training and sampling default on which the paper and the authors' released
code differ, selectable with ``--recipe`` on ``train/train_vae.py``, ``train/finetune_sd35.py`` and
``train/finetune_dit.py``.

A recipe only sets defaults: a flag given on the command line always wins. ``docs/recipes.md``
tables every choice with its source. The values here are keyed by the scripts' argument names
(``dest``), so :func:`recipe_defaults` can be handed to ``ArgumentParser.set_defaults``.

- ``paper`` (the default): the paper's equations and Table S1 as written (the velocity loss of
  Eq. 13, the alignment weight 1.0, an adversarial term at 0.1, the raw image as the
  reconstruction target). On the embedded model it trains the better DA-VAE at equal steps
  (``docs/recipes.md``).
- ``released``: what the authors' released SD3 code runs, the recipe behind the published
  checkpoints; choose it to reproduce them.
- ``imagenet``: the released ImageNet (VA-VAE / LightningDiT) code's choices, for class-conditional
  DiTs: every latent channel standardised, adaptive alignment weight 0.5, detail dropout 0.1, KL
  as a mean, the detail posterior sampled for the DiT's training latents, the cosine velocity
  term, and its sampler (CFG 4.0 from t = 0.2, time warp 0.3).

Not every recipe applies to every script: :func:`recipes_for` names those that do, and
:data:`DEFAULT_RECIPES` the default of each script.
"""

from __future__ import annotations

RELEASED_NEGATIVE_PROMPT = " deformed, low quality & bad aesthetics & poor aesthetics "

RECIPES: dict[str, dict[str, dict]] = {
    "released": {
        "train_vae": {
            "recon_target": "base_reconstruction",  # L1 / LPIPS against the base VAE's own reconstruction
            "image_range": "unit",  # L1 on [0, 1] images
            "clamp_output": True,  # decoder output clamped to the image range in training
            "lr_schedule": "cosine",
            "l1_weight": 2.0,
            "kl_weight": 1e-7,
            "lpips_weight": 1.0,
            "align_weight": 0.2,  # 1.0 x encoder_alignment_mse_weight 0.2
            "align_mode": "constant",
            "kl_form": "sum",
            "detail_dropout": 0.0,
            "latent_norm": "detail",
            "gan": False,
        },
        "finetune": {
            "loss_mode": "x0_min_snr",
            "min_snr_gamma": 5.0,
            "grad_clip": 0.5,
            "skip_grad_norm": 10.0,  # skip steps whose gradient norm is non-finite or above this
            "trainable_dtype": "auto",  # bf16 LoRA / head weights under --mixed-precision bf16
            "timestep_rounding": "floor",  # the transformer and min-SNR see floor(1000 sigma)
            "shift": 4.0,
        },
        "sampling": {"steps": 30, "guidance": 2.5, "shift": 4.0, "negative_prompt": RELEASED_NEGATIVE_PROMPT},
    },
    "paper": {
        "train_vae": {
            "recon_target": "image",
            "image_range": "signed",  # the paper does not say; our images are in [-1, 1]
            "clamp_output": False,
            "lr_schedule": "constant",
            "l1_weight": 2.0,
            "kl_weight": 1e-7,
            "lpips_weight": 1.0,
            "align_weight": 1.0,
            "align_mode": "constant",
            "kl_form": "sum",
            "detail_dropout": 0.0,
            "latent_norm": "detail",
            "gan": True,  # lambda_adv = 0.1 (Table S1), from --gan-start
        },
        "finetune": {
            "loss_mode": "velocity",  # Eq. 13
            "min_snr_gamma": 5.0,
            "grad_clip": 1.0,
            "skip_grad_norm": 0.0,
            "trainable_dtype": "float32",
            "timestep_rounding": "none",
            "shift": 4.0,
        },
        "sampling": {"steps": 30, "guidance": 2.5, "shift": 4.0, "negative_prompt": ""},
    },
    "imagenet": {
        "train_vae": {
            "recon_target": "image",
            "image_range": "signed",  # [-1, 1] images
            "clamp_output": False,
            "lr_schedule": "constant",
            "l1_weight": 1.0,
            "kl_weight": 1e-6,
            "lpips_weight": 1.0,
            "align_weight": 0.5,  # x the gradient-norm ratio (VA-VAE's adaptive VF weight)
            "align_mode": "adaptive",
            "kl_form": "mean",  # mean(mu^2 + s^2 - 1 - log s^2), no 1/2
            "detail_dropout": 0.1,  # whole-sample, inverted scaling
            "latent_norm": "all",  # every channel standardised with calibrated statistics
            "gan": True,  # PatchGAN hinge x 0.1 x adaptive ratio from step 5001
        },
        "finetune_dit": {
            "lr": 2e-4,
            "adam_beta2": 0.95,
            "cosine_weight": 1.0,  # LightningDiT's 1 - cos(v_hat, v) over channels, unmasked
            "label_dropout": 0.1,
            "detail_latent": "sample",  # base = posterior mean, detail = posterior sample
            "shift": 1.0,  # logit-normal t, no shift
            "grad_clip": 1.0,
            "skip_grad_norm": 0.0,
        },
        "sampling_dit": {"steps": 250, "guidance": 4.0, "cfg_start": 0.2, "time_warp": 0.3},
    },
}
DEFAULT_RECIPE = "paper"
DEFAULT_RECIPES = {"train_vae": "paper", "finetune": "paper", "sampling": "paper", "finetune_dit": "imagenet",
                   "sampling_dit": "imagenet"}
RECIPE_NAMES = tuple(RECIPES)


def recipes_for(script: str) -> tuple[str, ...]:
    """The recipes that set ``script``'s defaults."""
    return tuple(name for name in RECIPE_NAMES if script in RECIPES[name])


def recipe_defaults(script: str, name: str) -> dict:
    """The defaults recipe ``name`` gives script ``script`` ("train_vae", "finetune", "sampling",
    "finetune_dit" or "sampling_dit")."""
    if name not in RECIPES:
        raise ValueError(f"recipe_defaults: 'name' must be one of {RECIPE_NAMES}, got {name!r}")
    if script not in RECIPES[name]:
        raise ValueError(f"recipe_defaults: 'script' must be one of {tuple(RECIPES[name])}, got {script!r}")
    return dict(RECIPES[name][script])


def describe(script: str, key: str) -> str:
    """``released: X; paper: Y`` for a flag's help text (the recipes that set ``script``)."""
    return "; ".join(f"{name}: {RECIPES[name][script][key]!r}" for name in recipes_for(script))
