"""Fine-tuning a FLUX-class transformer on a DA-VAE latent: the run ``train/finetune_flux.py``
starts (:func:`finetune_flux`), :func:`.finetune.finetune` with :class:`FluxTuner`.

What FLUX changes against SD3: the transformer (``FluxTransformer2DModel``, widened by
:func:`davae_ext.models.flux.expand_flux_transformer`: ``x_embedder`` and ``proj_out`` in the
packed channel order), the forward call (packed tokens, RoPE ids from the token grid, a guidance
value for a guidance-distilled model: ``--train-guidance``), the text encoders (CLIP-L pooled + T5,
``--max-sequence-length`` tokens), the LoRA targets (both kinds of block), the timestep shift
(by default FLUX's own dynamic shift at the training token count) and the pipeline written at the
end (:class:`~davae_ext.models.flux_pipeline.DAVAEFluxPipeline`). The objective, the detail-loss
warm-up of Eqs. 12-13, caching, EMA, checkpoints and FSDP are :mod:`.finetune`'s.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..models.davae import DAVAE
from .finetune import SD3Tuner, finetune
from .lora import FLUX_FULL_MODULES

TEXT_LENGTH = 512  # T5 tokens per prompt of FLUX.1-dev


def finetune_flux(args: argparse.Namespace) -> dict:
    """Runs the fine-tuning ``args`` describe (parsed and checked by :mod:`.cli` with
    ``family="flux"``); returns the summary also written to ``summary.json``."""
    return finetune(args, FluxTuner)


def is_embedded(model: str) -> bool:
    from .tiny_flux import VERSION

    return Path(model).name.startswith(VERSION)


def text_length(args) -> int:
    from .tiny_flux import MAX_SEQUENCE_LENGTH

    if args.max_sequence_length:
        return args.max_sequence_length
    return MAX_SEQUENCE_LENGTH if is_embedded(args.model) else TEXT_LENGTH


def dynamic_shift(scheduler_config: dict, tokens: int) -> float:
    """exp(mu), the shift FLUX's pipeline samples ``tokens`` image tokens with (``calculate_shift``)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(tokens, scheduler_config.get("base_image_seq_len", 256),
                         scheduler_config.get("max_image_seq_len", 4096), scheduler_config.get("base_shift", 0.5),
                         scheduler_config.get("max_shift", 1.15))
    return math.exp(mu)


class FluxTuner(SD3Tuner):
    """The widened FLUX transformer; everything else is :class:`.finetune.SD3Tuner`'s."""

    full_modules = FLUX_FULL_MODULES

    def __init__(self, args, run, original, davae: DAVAE, cache: dict):
        if args.shift is None:  # the pipeline's dynamic shift at the training token count
            from diffusers import FlowMatchEulerDiscreteScheduler

            config = FlowMatchEulerDiscreteScheduler.load_config(args.model, subfolder="scheduler")
            tokens = cache["base"].shape[-2] * cache["base"].shape[-1] // 4
            args.shift = dynamic_shift(config, tokens)
            run.accelerator.print(f"timestep shift {args.shift:.3f}: FLUX's dynamic shift at {tokens} tokens")
        super().__init__(args, run, original, davae, cache)

    @staticmethod
    def default_model(quick: bool, progress: bool) -> Path:
        from .tiny_flux import build_tiny_flux

        return build_tiny_flux(quick=quick, progress=progress)

    @staticmethod
    def load_pretrained(model: str):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")

    @staticmethod
    def default_resolution(original, davae: DAVAE, args=None) -> int:
        from .tiny import TinyRecipe

        if args is not None and is_embedded(args.model):
            return 2 * TinyRecipe().resolution  # twice what the embedded model was pretrained at
        return 1024  # a 32 x 32 token grid, what FLUX.1 sees at 512 px

    @staticmethod
    def base_pipeline_class():
        from diffusers import FluxPipeline

        return FluxPipeline

    @staticmethod
    def text_key(args) -> str:
        return f"flux-t5-{text_length(args)}"

    @classmethod
    def prompt_encoder(cls, args):
        pipe = cls.base_pipeline_class().from_pretrained(args.model, transformer=None, vae=None)
        length = text_length(args)

        def encode(prompts):
            e, p, _ = pipe.encode_prompt(prompts, prompts, max_sequence_length=length)
            return e, p
        return encode

    def predict(self, model, xt, emb, pooled, sigmas, t):
        """FLUX's timestep is in [0, 1]: ``t / 1000`` (so ``--timestep-rounding floor`` floors it the same)."""
        from ..models.flux import flux_predict

        guidance = torch.full((len(xt),), self.args.train_guidance, device=xt.device)
        return flux_predict(model, xt, emb, pooled, t / 1000, guidance, self.run.accelerator.unwrap_model(model))

    def expand(self, original):
        from ..models.flux import expand_flux_transformer

        return expand_flux_transformer(original, self.D, init="zero", order=self.order, fused=self.args.fused,
                                       share_weights=True)

    @staticmethod
    def davae_pipeline(args, transformer, davae: DAVAE):
        from ..models.flux_pipeline import DAVAEFluxPipeline

        base = FluxTuner.base_pipeline_class().from_pretrained(args.model, transformer=None, vae=None)
        return DAVAEFluxPipeline.from_flux_pipeline(base, transformer, davae)

    @staticmethod
    def sampling_defaults(args) -> dict:
        """FLUX.1-dev's 28 steps, ``--guidance`` as the guidance embedding, the training text length."""
        return {"steps": 28, "guidance": args.guidance, "negative_prompt": "", "max_sequence_length": text_length(args),
                "recipe": args.recipe}

    @staticmethod
    def sample_kwargs(args, pipe) -> dict:
        return {"guidance_scale": args.guidance, "max_sequence_length": text_length(args)}
