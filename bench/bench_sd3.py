"""The widened SD3 transformer: fused vs plain-PyTorch input/output layers.

- CPU: a tiny expanded SD3 transformer (2 layers, dual attention), forward + backward.
- CUDA: the SD3.5-M-sized patch embed + output head at 1024 px with DA-VAE (B=4, 64x64 latent,
  C = D = 16, p = 2, hidden 1536), forward + backward, bfloat16.
"""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import SD3Transformer2DModel  # noqa: E402
from diffusers.models.embeddings import PatchEmbed  # noqa: E402

from davae_ext.nn import DetailPatchEmbed, DetailProjOut  # noqa: E402
from davae_ext.models.sd3 import expand_transformer  # noqa: E402
from common import CUDA, time_direction  # noqa: E402

TINY = dict(
    sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=4,
    caption_projection_dim=64, joint_attention_dim=64, pooled_projection_dim=32, out_channels=16,
    pos_embed_max_size=48, dual_attention_layers=(0,), qk_norm="rms_norm",
)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def bench_tiny_sd3_fwdbwd_cpu(benchmark, fused):
    benchmark.group = "sd3-tiny-expanded-fwdbwd-cpu"
    torch.manual_seed(0)
    model = expand_transformer(SD3Transformer2DModel(**TINY), 16, init="random", fused=fused).train()
    latent = torch.randn(2, 32, 32, 32)
    text, pooled, t = torch.randn(2, 16, 64), torch.randn(2, 32), torch.tensor([10.0, 500.0])
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(latent):
        return model(latent, text, pooled, t).sample

    out = forward(latent)
    grad = torch.randn_like(out)

    def step():
        return torch.autograd.grad(forward(latent), params, grad)

    benchmark.extra_info["device"] = "cpu"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def bench_sd35m_io_layers_cuda(benchmark, fused):
    benchmark.group = "sd35m-1024-patch_embed+proj_out-fwdbwd-cuda"
    torch.manual_seed(0)
    dtype, B, C, D, H, p, hidden = torch.bfloat16, 4, 16, 16, 64, 2, 1536
    embed = DetailPatchEmbed.from_patch_embed(
        PatchEmbed(height=128, width=128, patch_size=p, in_channels=C, embed_dim=hidden, pos_embed_max_size=384),
        D, init="random", fused=fused).to("cuda", dtype)
    head = DetailProjOut.from_linear(torch.nn.Linear(hidden, p * p * C), C, D, p, init="random").to("cuda", dtype)
    latent = torch.randn(B, C + D, H, H, device="cuda", dtype=dtype)

    def forward(latent, *params):
        return head(embed(latent))

    params = list(embed.parameters()) + list(head.parameters())
    T = (H // p) ** 2
    flops = 3 * 2 * B * T * hidden * ((C + D) * p * p + p * p * (C + D))
    time_direction(benchmark, "cuda", forward, [latent, *params], "fwdbwd", 0, flops)
