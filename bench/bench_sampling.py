"""Sampling throughput: the DA-VAE pipeline (scale 2, same tokens as the base model at half the
resolution) against the native SD3 pipeline at the same output resolution (paper Fig. 1: about
4.1x at 1024 px on an A100, 6.04x at 2048 px).

Both run the real diffusers code paths (``DAVAEStableDiffusion3Pipeline`` and
``StableDiffusion3Pipeline``) with random weights and given prompt embeddings (333 text tokens,
no text encoders), classifier-free guidance on, batch 4:
- "transformer": ``output_type="latent"`` (the denoising loop);
- "end_to_end": denoising plus the VAE decode to pixels.

CUDA: the SD3.5-Medium transformer architecture (24 layers, hidden 1536, MMDiT-X dual attention
in layers 0-12) and the SD3 VAE architecture, bfloat16, at 1024 and 2048 px. CPU: the same at a
tiny size. ``BENCH_SAMPLING_STEPS`` sets the denoising steps (default 30); the speed-up per step
does not depend on it. ``extra_info`` holds s/image and the native/DA-VAE ratio of the pair.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402

from davae_ext.models.pipeline import DAVAEStableDiffusion3Pipeline  # noqa: E402
from davae_ext.models.sd3 import expand_transformer  # noqa: E402
from common import CUDA, cached_builds, random_models, time_sampling  # noqa: E402

SD35M = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
             num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
             pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD3_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
TINY = dict(SD35M, num_layers=2, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64,
            pooled_projection_dim=32, pos_embed_max_size=64, dual_attention_layers=(0,))
TINY_VAE = dict(SD3_VAE, block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8)

CASES = ([("cuda", "sd35m", 1024), ("cuda", "sd35m", 2048)] if CUDA else []) + [("cpu", "tiny", 256)]
STEPS = int(os.environ.get("BENCH_SAMPLING_STEPS", "30"))
BATCH = 4
_RESULTS: dict = {}


def _pipelines(device: str, size: str):
    cfg, vae_cfg = (SD35M, SD3_VAE) if size == "sd35m" else (TINY, TINY_VAE)
    transformer, vae, davae, dtype = random_models(device, SD3Transformer2DModel, cfg, vae_cfg)
    expanded = expand_transformer(transformer, 16, init="random", share_weights=True).eval()
    none = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    sched = FlowMatchEulerDiscreteScheduler(shift=4.0)
    native = StableDiffusion3Pipeline(transformer=transformer, scheduler=sched, vae=vae, **none)
    ours = DAVAEStableDiffusion3Pipeline(transformer=expanded, scheduler=sched, vae=davae, **none)
    for p in (native, ours):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(BATCH, 333, cfg["joint_attention_dim"], generator=g).to(device, dtype)
    pooled = torch.randn(BATCH, cfg["pooled_projection_dim"], generator=g).to(device, dtype)
    return native, ours, emb, pooled


@pytest.fixture(scope="module")
def pipelines():
    yield from cached_builds(_pipelines)


@pytest.mark.parametrize("mode", ["transformer", "end_to_end"])
@pytest.mark.parametrize("provider", ["native", "davae"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def bench_sampling(benchmark, pipelines, case, provider, mode):
    device, size, resolution = case
    native, ours, emb, pooled = pipelines(device, size)
    pipe = native if provider == "native" else ours
    benchmark.group = f"sampling-{device}-{size}-{resolution}-{mode}"
    kwargs = dict(prompt_embeds=emb, negative_prompt_embeds=emb, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=pooled, height=resolution, width=resolution, guidance_scale=2.5,
                  output_type="latent" if mode == "transformer" else "pt")

    latent = resolution // pipe.vae_scale_factor
    tokens = (latent // pipe.patch_size) ** 2
    info = {"device": device, "steps": STEPS, "batch": BATCH, "tokens": tokens}
    seconds = time_sampling(benchmark, device, lambda n: pipe(num_inference_steps=n, generator=torch.Generator().manual_seed(0),
                                                              **kwargs), STEPS, provider, _RESULTS, info)
    benchmark.extra_info.update(seconds_per_image=seconds / BATCH, images_per_s=BATCH / seconds)
