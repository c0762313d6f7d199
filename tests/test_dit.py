"""Class-conditional DiTs on a DA-VAE latent: the widening of diffusers' DiTTransformer2DModel and
of the DiT / SiT / LightningDiT module layout (zero-init identity, learned-sigma heads, save /
load), the ImageNet objective, the sampler's grid, the FID math and the class-folder inputs."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("diffusers")
from diffusers import DiTTransformer2DModel  # noqa: E402

from davae_ext.channels import join_channels, split_channels  # noqa: E402
from davae_ext.models.dit import DAVAEDiTTransformer2DModel, expand_dit, expand_dit_modules  # noqa: E402

ORDERS = ["base_first", "detail_first"]
C, D = 4, 8


def _diffusers_dit(patch: int, learned_sigma: bool, seed: int = 0) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=C,
                                  out_channels=2 * C if learned_sigma else None, num_layers=2, sample_size=8,
                                  patch_size=patch, num_embeds_ada_norm=5, norm_num_groups=1)
    with torch.no_grad():  # DiT zero-initialises its adaLN and head: give them values so the test means something
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _inputs(order: str, batch: int = 3, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    base, detail = torch.randn(batch, C, size, size, generator=g), torch.randn(batch, D, size, size, generator=g)
    t = torch.tensor([20.0, 500.0, 950.0][:batch])
    y = torch.tensor([0, 3, 4][:batch])
    return base, join_channels(base, detail, order), t, y


def _halves(out: torch.Tensor, groups: int, order: str):
    """(base, detail) channels of each output half, concatenated over the halves."""
    parts = [split_channels(h, C, order) for h in out.chunk(groups, dim=1)]
    return torch.cat([b for b, _ in parts], 1), torch.cat([d for _, d in parts], 1)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("patch", [1, 2])
def test_diffusers_dit_zero_init_identity(patch, learned_sigma, order):
    original = _diffusers_dit(patch, learned_sigma)
    base, latent, t, y = _inputs(order)
    with torch.no_grad():
        ref = original(base, t, y).sample
        groups = 2 if learned_sigma else 1
        for fused in (False, True):
            widened = expand_dit(original, D, order=order, fused=fused).eval()
            out = widened(latent, t, y).sample
            assert out.shape == (3, groups * (C + D), 8, 8)
            got_base, got_detail = _halves(out, groups, order)
            if fused:
                torch.testing.assert_close(got_base, ref, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(got_base, ref)  # the plain path is the pretrained arithmetic bit for bit
            assert torch.equal(got_detail, torch.zeros_like(got_detail))


def test_diffusers_dit_fused_matches_plain_with_gradients():
    original = _diffusers_dit(2, True)
    a = expand_dit(original, D, init="random", fused=True)
    b = expand_dit(original, D, init="random", fused=False)
    b.load_state_dict(a.state_dict())
    _, latent, t, y = _inputs("base_first")
    outs = []
    for model in (a, b):
        x = latent.clone().requires_grad_(True)
        out = model(x, t, y).sample
        out.square().mean().backward()
        outs.append((out, x.grad, model.pos_embed.proj.weight.grad, model.proj_out_2.weight.grad))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_widened_diffusers_dit_saves_and_loads(tmp_path):
    widened = expand_dit(_diffusers_dit(1, True), D, init="random", order="detail_first").eval()
    widened.save_pretrained(tmp_path / "dit")
    loaded = DAVAEDiTTransformer2DModel.from_pretrained(tmp_path / "dit").eval()
    assert loaded.config.in_channels == C + D and loaded.config.out_channels == 2 * (C + D)
    assert loaded.config.channel_order == "detail_first" and loaded.learned_sigma
    _, latent, t, y = _inputs("detail_first")
    with torch.no_grad():
        assert torch.equal(loaded(latent, t, y).sample, widened(latent, t, y).sample)


# ----------------------------------------------------------------------------------------------
# The DiT / SiT / LightningDiT layout, written here as research code writes it
# ----------------------------------------------------------------------------------------------
class _PatchEmbed(nn.Module):  # timm's PatchEmbed, as DiT uses it
    def __init__(self, in_chans, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.Identity()
        self.flatten = True

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class _FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(F.silu(c)).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale[:, None]) + shift[:, None])


class ResearchDiT(nn.Module):
    """DiT's module layout and unpatchify at toy size: x_embedder.proj, a learned positional
    table, class + timestep conditioning, one MLP block, final_layer.linear, (p, p, c) order."""

    def __init__(self, in_channels=C, patch=2, dim=32, grid=4, classes=5, learn_sigma=True):
        super().__init__()
        self.in_channels, self.patch_size, self.learn_sigma = in_channels, patch, learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.x_embedder = _PatchEmbed(in_channels, dim, patch)
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, grid * grid, dim))
        self.y_embedder = nn.Embedding(classes + 1, dim)
        self.t_embedder = nn.Linear(1, dim)
        self.block = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.final_layer = _FinalLayer(dim, patch, self.out_channels)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t[:, None] / 1000) + self.y_embedder(y)
        x = x + self.block(x + c[:, None])
        return self.unpatchify(self.final_layer(x, c))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("embedder", ["x_embedder", "x_embedder.proj"])
def test_research_layout_zero_init_identity(embedder, patch, learn_sigma, order):
    torch.manual_seed(0)
    original = ResearchDiT(patch=patch, grid=8 // patch, learn_sigma=learn_sigma).eval()
    base, latent, t, y = _inputs(order)
    groups = 2 if learn_sigma else 1
    with torch.no_grad():
        ref = original(base, t, y)
        for fused in (False, True):
            widened = expand_dit_modules(copy.deepcopy(original), D, embedder=embedder, order=order, fused=fused)
            assert widened.in_channels == C + D and widened.out_channels == groups * (C + D)
            got_base, got_detail = _halves(widened(latent, t, y), groups, order)
            if fused:
                torch.testing.assert_close(got_base, ref, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(got_base, ref)
            assert torch.equal(got_detail, torch.zeros_like(got_detail))


def test_research_layout_state_dict_loads_into_the_wider_model():
    """The widened state dict is that of the same class built with C + D channels (the
    checkpoint a research codebase saves and loads without our classes)."""
    torch.manual_seed(0)
    widened = expand_dit_modules(ResearchDiT(), D, init="random", fused=False)
    fresh = ResearchDiT(in_channels=C + D)
    fresh.load_state_dict(widened.state_dict())
    _, latent, t, y = _inputs("base_first", size=8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(latent, t, y), widened(latent, t, y), rtol=1e-5, atol=1e-5)


def test_widening_bad_inputs():
    model = ResearchDiT()
    with pytest.raises(ValueError, match=r"multiple of the model's 4 latent channels"):
        expand_dit_modules(copy.deepcopy(model), 6)
    with pytest.raises(ValueError, match="no module at 'final.linear'"):
        expand_dit_modules(copy.deepcopy(model), D, head="final.linear")
    wrong = copy.deepcopy(model)
    wrong.final_layer.linear = nn.Linear(32, 2 * 2 * 3)  # 3 channels per position: not C or 2C
    with pytest.raises(ValueError, match=r"head does not match the latent: it has 12 output features.*p\*p\*C = 16"):
        expand_dit_modules(wrong, D)
    with pytest.raises(ValueError, match="multiple of the model's 4 latent channels"):
        expand_dit(_diffusers_dit(2, False), 6)
    with pytest.raises(TypeError, match="must be a DiTTransformer2DModel"):
        expand_dit(model, D)
    with pytest.raises(ValueError, match="out_channels .* must be in_channels or 2 x in_channels"):
        DAVAEDiTTransformer2DModel(in_channels=12, out_channels=18, detail_channels=8, num_layers=1,
                                   num_attention_heads=2, attention_head_dim=8, sample_size=4)


# ----------------------------------------------------------------------------------------------
# Objective, sampler grid, FID
# ----------------------------------------------------------------------------------------------
def test_cosine_term_and_the_imagenet_loss_against_hand_computation():
    from davae_ext.training.flow import cosine_velocity_loss, flow_loss

    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(2, C + D, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    v = noise - x0
    cos = torch.zeros(())
    for b in range(2):
        for i in range(3):
            for j in range(3):
                a, t = pred[b, :, i, j], v[b, :, i, j]
                cos += 1 - (a @ t) / (a.norm() * t.norm())
    assert float(cosine_velocity_loss(pred, v)) == pytest.approx(float(cos / 18), rel=1e-6)
    # The ImageNet code's masked term: mean over elements of (v_hat - v)^2 m numel(m) / sum(m),
    # m = 1 on the base channels and w on the detail ones.
    w = 0.3
    m = torch.tensor([1.0] * C + [w] * D, dtype=torch.float64).view(1, -1, 1, 1)
    masked = ((pred - v) ** 2 * m * (m.numel() / m.sum())).mean()
    ours = flow_loss(pred, x0, noise, torch.rand(2, generator=g), C, "base_first", w)["loss"]
    assert float(ours) == pytest.approx(float(masked), rel=1e-6)


def test_sigma_grid_and_time_warp():
    from davae_ext.models.dit_pipeline import sigma_grid

    s = sigma_grid(4, 1.0)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    warped = sigma_grid(4, 0.3)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    torch.testing.assert_close(warped, 1 - 0.3 * t / (1 - 0.7 * t))
    assert warped[1] > s[1]  # s < 1: more steps near the noise end
    with pytest.raises(ValueError):
        sigma_grid(0)


def test_frechet_distance_closed_form_on_gaussians():
    from davae_ext.training.fid import feature_statistics, frechet_distance

    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(closed, rel=1e-10)
    # A rotated pair: the distance is invariant to rotating both distributions.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(closed, rel=1e-8)
    assert frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-10)
    # From samples: the estimate converges to the closed form.
    rng = np.random.default_rng(1)
    a = rng.normal(mu1, np.sqrt(var1), size=(200_000, 3))
    b = rng.normal(mu2, np.sqrt(var2), size=(200_000, 3))
    assert frechet_distance(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(closed, rel=0.02)
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(mu1, np.diag(var1), mu2[:2], np.diag(var2[:2]))


class _Features(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)) / 255.0


def test_inception_loader_runs_a_local_torchscript_file(tmp_path):
    from davae_ext.training.fid import features_of, load_inception

    path = tmp_path / "features.pt"
    torch.jit.script(_Features()).save(str(path))
    fn = load_inception(str(path))
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    feats = features_of(fn, [images[:2], images[2:]])
    np.testing.assert_allclose(feats, ((images + 1) * 127.5).round().mean(dim=(2, 3)).numpy() / 255, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_inception(str(tmp_path / "missing.pt"))


# ----------------------------------------------------------------------------------------------
# DA-VAE normalisation of every channel, class folders
# ----------------------------------------------------------------------------------------------
def _small_davae(latent_norm: str):
    from diffusers import AutoencoderKL

    from davae_ext.models.davae import DAVAE

    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=C, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    return DAVAE.from_base_vae(vae, detail_channels=D, latent_norm=latent_norm).eval()


def test_davae_standardises_every_channel_with_latent_norm_all():
    model = _small_davae("all")
    images = [torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(3)]
    model.calibrate_latent_stats(images)
    assert len(model.config.base_mean) == C and len(model.config.detail_std) == D
    z = torch.cat([model.diffusion_latents(x, normalize=False) for x in images])
    n = model.normalize_latents(z)
    base, detail = model.split_latents(n)
    torch.testing.assert_close(base.mean(dim=(0, 2, 3)), torch.zeros(C), atol=1e-5, rtol=0)
    torch.testing.assert_close(base.std(dim=(0, 2, 3), unbiased=False), torch.ones(C), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.denormalize_latents(n), z, atol=1e-5, rtol=1e-5)
    only_detail = _small_davae("detail")
    only_detail.calibrate_latent_stats(images)
    assert only_detail.config.base_mean is None
    assert torch.equal(only_detail.split_latents(only_detail.normalize_latents(z))[0], model.split_latents(z)[0])
    with pytest.raises(ValueError, match="'latent_norm' must be one of"):
        _small_davae("some")


def test_diffusion_latents_sample_mode_and_noise():
    model = _small_davae("detail")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mode = model.diffusion_latents(x, "mode", normalize=False)
    post = model.encode(x).latent_dist
    assert torch.equal(mode, post.mode())
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    sample = model.diffusion_latents(x, "sample", generator=g(), normalize=False)
    assert torch.equal(sample, post.sample(g()))
    noised = model.diffusion_latents(x, "mode", detail_noise=1.0, generator=g(), normalize=False)
    base, detail = model.split_latents(noised - mode)
    assert torch.equal(base, torch.zeros_like(base))
    torch.testing.assert_close(detail, torch.randn(detail.shape, generator=g()))


def test_class_image_folder(tmp_path):
    from PIL import Image

    from davae_ext.training.data import ClassImageFolder

    for name, colour in (("b_red", (255, 0, 0)), ("a_blue", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.new("RGB", (20, 20), colour).save(tmp_path / name / f"{k}.png")
    ds = ClassImageFolder(tmp_path, 16, center_crop=True, random_flip=False)
    assert ds.classes == ["a_blue", "b_red"] and len(ds) == 4
    item = ds[3]
    assert item["class_label"] == 1 and item["caption"] == "b_red" and item["pixel_values"][0].mean() > 0.9
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (20, 20)).save(flat / "x.png")
    with pytest.raises(ValueError, match=r"no class subfolders.*torchvision's ImageFolder \(it holds 1 images directly\)"):
        ClassImageFolder(flat, 16)


def test_dit_pipeline_rejects_bad_labels_and_mismatched_parts():
    from diffusers import AutoencoderKL

    from davae_ext.models.dit_pipeline import DAVAEDiTPipeline

    dit = _diffusers_dit(1, False)
    vae = AutoencoderKL(latent_channels=C, block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, layers_per_block=1)
    pipe = DAVAEDiTPipeline(transformer=dit, vae=vae)
    with pytest.raises(ValueError, match=r"'class_labels' must be in \[0, 5\)"):
        pipe([5])
    images = pipe([0, 4], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and math.isfinite(float(images.sum()))
    with pytest.raises(TypeError, match="needs a DAVAE"):
        DAVAEDiTPipeline(transformer=expand_dit(dit, D), vae=vae)
    assert json.dumps(pipe.sampling_defaults) == "{}"
