"""DA-VAE on FLUX-class transformers: where the fused kernel pays, and the sampling speed-up.

``bench_flux_embed``: FLUX pipelines pack the latent (2 x 2 pixel-unshuffle, channel slowest)
and run ``x_embedder``, a ``Linear(4 (C + D), hidden)``, over the tokens. Providers:
- "fused": ``DetailPackedEmbed`` on the unpacked latent: the patch-embed kernel, gather + GEMM
  in one op, no table (what ``train/finetune_flux.py --fused`` runs);
- "pack_linear": pack, then the Linear (diffusers' FLUX training scripts; ``--fused`` off);
- "prepacked_linear": the Linear on tokens packed beforehand (the pipeline's denoising loop,
  which packs once per image: the floor, and what sampling runs whatever ``--fused`` says).
Directions: "fwd", "finetune_bwd" (weight and bias gradients, frozen latent: LoRA fine-tuning's
backward) and "fwdbwd" (latent, weight and bias). FLUX.1 sizes: hidden 3072, C = D = 16, the
DA-VAE latent of a 1024 px (64 x 64, 1024 tokens) and a 2048 px image (128 x 128, 4096 tokens).

``bench_flux_sampling``: ``DAVAEFluxPipeline`` at 2x the resolution per token against
``FluxPipeline`` at the same output size, denoising only ("transformer") and with the decode
("end_to_end"), guidance embedding on, given prompt embeddings (no text encoders). CPU: the
tiny FLUX architecture at 256 px; CUDA: FLUX.1's full transformer (19 double, 38 single blocks,
hidden 3072; random weights, bfloat16) at 1024 px. ``BENCH_SAMPLING_STEPS`` sets the steps.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
from davae_ext import ops  # noqa: E402
from davae_ext.nn import pack_latents  # noqa: E402
from common import CUDA, Shape, cached_builds, case_id, random_models, time_direction, time_sampling  # noqa: E402

CPU_SHAPES = [Shape("flux-1024", 1, 16, 16, 64, 64, 2, 3072), Shape("flux-2048", 1, 16, 16, 128, 128, 2, 3072)]
CUDA_SHAPES = [Shape("flux-1024", 4, 16, 16, 64, 64, 2, 3072), Shape("flux-2048", 4, 16, 16, 128, 128, 2, 3072)]
EMBED_CASES = [("cpu", torch.float32, s) for s in CPU_SHAPES] + \
    ([("cuda", torch.bfloat16, s) for s in CUDA_SHAPES] if CUDA else [])


def embed_inputs(device, dtype, s, direction):
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(s.B, s.C + s.D, s.H, s.W, generator=g).to(device, dtype)
    weight = (torch.randn(s.hidden, s.K, generator=g) * s.K ** -0.5).to(device, dtype)
    bias = torch.randn(s.hidden, generator=g).to(device, dtype)
    if direction != "fwd":
        weight.requires_grad_(True)
        bias.requires_grad_(True)
    if direction == "fwdbwd":
        latent.requires_grad_(True)
    return latent, weight, bias


def fused(latent, weight, bias):
    return ops.patch_embed(latent, weight.unflatten(1, (-1, 2, 2)), bias, None, 2)


def pack_linear(latent, weight, bias):
    return F.linear(pack_latents(latent), weight, bias)


def embed_counts(s, elem, direction):
    """Bytes each direction must move at least, and its FLOPs."""
    out, lat, w = s.M * s.hidden, s.M * s.K, s.hidden * s.K
    fwd = lat + w + s.hidden + out  # read latent, weight, bias; write the tokens
    finetune_bwd = out + lat + w + s.hidden  # read dOut, latent; write dW, d_bias
    gemm = 2 * s.M * s.hidden * s.K
    return {"fwd": (elem * fwd, gemm), "finetune_bwd": (elem * finetune_bwd, gemm),
            "fwdbwd": (elem * (fwd + finetune_bwd + w + lat), 3 * gemm)}[direction]  # + read W, write dX


@pytest.mark.parametrize("provider", ["fused", "pack_linear", "prepacked_linear"])
@pytest.mark.parametrize("direction", ["fwd", "finetune_bwd", "fwdbwd"])
@pytest.mark.parametrize("case", EMBED_CASES, ids=case_id)
def bench_flux_embed(benchmark, case, direction, provider):
    device, dtype, s = case
    benchmark.group = f"flux_embed-{direction}-{case_id(case)}"
    latent, weight, bias = embed_inputs(device, dtype, s, direction)
    if provider == "prepacked_linear":
        latent = pack_latents(latent.detach()).contiguous().requires_grad_(latent.requires_grad)
        forward = F.linear
    else:
        forward = fused if provider == "fused" else pack_linear
    nbytes, flops = embed_counts(s, torch.finfo(dtype).bits // 8, direction)
    timed = {"fwd": "fwd", "finetune_bwd": "bwd", "fwdbwd": "fwdbwd"}[direction]
    time_direction(benchmark, device, forward, [latent, weight, bias], timed, nbytes, flops)


# -- sampling -----------------------------------------------------------------------------------
FLUX1 = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
TINY = dict(FLUX1, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
            joint_attention_dim=96, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(FLUX_VAE, block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8)
SAMPLING_CASES = ([("cuda", "flux1", 1024)] if CUDA else []) + [("cpu", "tiny", 256)]
STEPS = int(os.environ.get("BENCH_SAMPLING_STEPS", "30"))
TEXT_TOKENS = 512
BATCH = 2
_RESULTS: dict = {}


def _flux_pipelines(device: str, size: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from davae_ext.models.flux import expand_flux_transformer
    from davae_ext.models.flux_pipeline import DAVAEFluxPipeline

    cfg, vae_cfg = (FLUX1, FLUX_VAE) if size == "flux1" else (TINY, TINY_VAE)
    transformer, vae, davae, dtype = random_models(device, FluxTransformer2DModel, cfg, vae_cfg)
    widened = expand_flux_transformer(transformer, 16, init="random", share_weights=True).eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    none = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    native = FluxPipeline(scheduler=sched, vae=vae, transformer=transformer, **none)
    ours = DAVAEFluxPipeline(scheduler=sched, vae=davae, transformer=widened, **none)
    for p in (native, ours):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(BATCH, TEXT_TOKENS if size == "flux1" else 64, cfg["joint_attention_dim"], generator=g)
    pooled = torch.randn(BATCH, cfg["pooled_projection_dim"], generator=g)
    return native, ours, emb.to(device, dtype), pooled.to(device, dtype)


@pytest.fixture(scope="module")
def flux_pipelines():
    yield from cached_builds(_flux_pipelines)


@pytest.mark.parametrize("mode", ["transformer", "end_to_end"])
@pytest.mark.parametrize("provider", ["native", "davae"])
@pytest.mark.parametrize("case", SAMPLING_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def bench_flux_sampling(benchmark, flux_pipelines, case, provider, mode):
    device, size, resolution = case
    native, ours, emb, pooled = flux_pipelines(device, size)
    pipe = native if provider == "native" else ours
    benchmark.group = f"flux_sampling-{device}-{size}-{resolution}-{mode}"
    kwargs = dict(prompt_embeds=emb, pooled_prompt_embeds=pooled, height=resolution, width=resolution,
                  guidance_scale=3.5, output_type="latent" if mode == "transformer" else "pt")

    tokens = (resolution // pipe.vae_scale_factor // 2) ** 2
    info = {"device": device, "steps": STEPS, "batch": BATCH, "tokens": tokens}
    seconds = time_sampling(benchmark, device, lambda n: pipe(num_inference_steps=n, generator=torch.Generator().manual_seed(0),
                                                              **kwargs), STEPS, provider, _RESULTS, info)
    benchmark.extra_info.update(seconds_per_image=seconds / BATCH)


# -- FLUX.1's blocks at full width ---------------------------------------------------------------
BLOCK_CASES = [("cpu", torch.float32, 1024)] + ([("cuda", torch.bfloat16, 1024), ("cuda", torch.bfloat16, 2048)]
                                                if CUDA else [])
_BLOCK_SECONDS: dict = {}


def _flux_blocks(device, dtype):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    torch.manual_seed(0)
    heads, head_dim = FLUX1["num_attention_heads"], FLUX1["attention_head_dim"]
    with torch.device(device):
        return {"double": FluxTransformerBlock(heads * head_dim, heads, head_dim).to(dtype).eval(),
                "single": FluxSingleTransformerBlock(heads * head_dim, heads, head_dim).to(dtype).eval()}


@pytest.fixture(scope="module")
def flux_blocks():
    yield from cached_builds(_flux_blocks)


@pytest.mark.parametrize("provider", ["native", "davae"])
@pytest.mark.parametrize("block", ["double", "single"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: f"{c[0]}-{str(c[1]).replace('torch.', '')}-{c[2]}")
def bench_flux_block(benchmark, flux_blocks, case, block, provider):
    """One FLUX.1 block (hidden 3072, 24 heads, 512 text tokens) at an output ``resolution``:
    native FLUX sees (resolution / 16)^2 image tokens, the DA-VAE model a quarter of them. FLUX.1's
    transformer is 19 double + 38 single blocks on the same tokens, so ``flux1_transformer_s``
    (19 x double + 38 x single, from this run's two block times) is its time per step, without the
    embedders and head (under 1% of it)."""
    from diffusers.models.embeddings import FluxPosEmbed

    device, dtype, resolution = case
    side = resolution // 16 // (2 if provider == "davae" else 1)
    benchmark.group = f"flux_block-{device}-{resolution}-{block}"
    dim = FLUX1["num_attention_heads"] * FLUX1["attention_head_dim"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, side * side, dim, generator=g).to(device, dtype)
    context = torch.randn(1, TEXT_TOKENS, dim, generator=g).to(device, dtype)
    temb = torch.randn(1, dim, generator=g).to(device, dtype)
    ids = torch.zeros(TEXT_TOKENS + side * side, 3)
    ids[TEXT_TOKENS:, 1] = torch.arange(side).repeat_interleave(side)
    ids[TEXT_TOKENS:, 2] = torch.arange(side).repeat(side)
    rope = tuple(t.to(device) for t in FluxPosEmbed(theta=10000, axes_dim=FLUX1["axes_dims_rope"])(ids))
    module = flux_blocks(device, dtype)[block]

    def call():
        with torch.inference_mode():
            module(x, context, temb, rope)
        if device == "cuda":
            torch.cuda.synchronize()

    call()
    benchmark.pedantic(call, rounds=2 if device == "cpu" else 10, iterations=1)
    seconds = benchmark.stats.stats.median
    key = (device, resolution, provider)
    _BLOCK_SECONDS.setdefault(key, {})[block] = seconds
    info = {"image_tokens": side * side, "text_tokens": TEXT_TOKENS, "seconds": seconds}
    if len(_BLOCK_SECONDS[key]) == 2:
        info["flux1_transformer_s"] = 19 * _BLOCK_SECONDS[key]["double"] + 38 * _BLOCK_SECONDS[key]["single"]
        other = _BLOCK_SECONDS.get((device, resolution, "native" if provider == "davae" else "davae"), {})
        if len(other) == 2:
            theirs = 19 * other["double"] + 38 * other["single"]
            ratio = theirs / info["flux1_transformer_s"] if provider == "davae" else info["flux1_transformer_s"] / theirs
            info["flux1_native_over_davae"] = ratio
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.group} {provider}: {seconds:.3f} s, {side * side} image tokens"
          + (f"; FLUX.1 transformer {info['flux1_transformer_s']:.1f} s/step" if "flux1_transformer_s" in info else "")
          + (f", native/DA-VAE = {info['flux1_native_over_davae']:.2f}x" if "flux1_native_over_davae" in info else ""))
