"""davae_ext.DAVAE on a tiny AutoencoderKL: shapes, the base path, freezing, save/load, fused vs
reference, latent statistics and bad input."""

import pytest
import torch
import torch.nn.functional as F

import davae_ext

pytest.importorskip("diffusers")
from davae_ext.models import davae as davae_mod  # noqa: E402
from davae_ext.models.davae import DAVAE, ChannelToSpaceUp, SpaceToChannelDown  # noqa: E402
from davae_ext.training.tiny import build_vae  # noqa: E402
from conftest import DEVICES, ORDERS, require_ext  # noqa: E402


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    v = build_vae()
    v.register_to_config(shift_factor=0.1, scaling_factor=0.8)  # exercised by the base path
    return v


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("D", [16, 48])
def test_shapes(vae, D, order):
    model = DAVAE.from_base_vae(vae, detail_channels=D, order=order)
    x = _images(2, 64)
    post = model.encode(x).latent_dist
    assert post.mode().shape == (2, 16 + D, 4, 4)  # base factor 8 x scale 2 = 16
    assert post.sample(torch.Generator().manual_seed(0)).shape == (2, 16 + D, 4, 4)
    assert model.decode(post.mode()).sample.shape == x.shape
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.sample.shape == x.shape and out.align_loss.dim() == 0
    assert model.spatial_factor == 16


@pytest.mark.parametrize("order", ORDERS)
def test_base_channels_are_the_frozen_encoder_on_the_half_image(vae, order):
    model = DAVAE.from_base_vae(vae, order=order)
    x = _images(2, 64)
    half = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    expected = (vae.encode(half).latent_dist.mean - 0.1) * 0.8
    latent = model.encode(x).latent_dist.mode()
    base = latent[:, :16] if order == "base_first" else latent[:, -16:]
    torch.testing.assert_close(base, expected)


def test_trunks_start_from_the_pretrained_weights(vae):
    model = DAVAE.from_base_vae(vae)
    torch.testing.assert_close(model.detail_encoder.down_blocks[0].resnets[0].conv1.weight,
                               vae.encoder.down_blocks[0].resnets[0].conv1.weight)
    torch.testing.assert_close(model.decoder.up_blocks[-1].resnets[0].conv1.weight, vae.decoder.up_blocks[-1].resnets[0].conv1.weight)
    fresh = DAVAE.from_base_vae(vae, init_from_base=False)
    assert not torch.equal(fresh.decoder.conv_out.weight, vae.decoder.conv_out.weight)


def test_frozen_parameters_do_not_change_in_a_training_step(vae):
    model = DAVAE.from_base_vae(vae)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("base_vae.", "detail_encoder.")) for n in frozen)
    assert all(not p.requires_grad for p in model.base_vae.parameters())
    assert all(not p.requires_grad for p in model.detail_encoder.parameters())  # freeze_detail_trunk=True
    assert any(n.startswith("detail_down.") for n in trainable) and any(n.startswith("decoder.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model(_images(2, 32), generator=torch.Generator().manual_seed(1))
    (F.l1_loss(out.sample, _images(2, 32)) + out.align_loss).backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    assert not model.base_vae.training  # the frozen base VAE never enters training mode
    unfrozen = DAVAE.from_base_vae(vae, freeze_detail_trunk=False)
    assert all(p.requires_grad for p in unfrozen.detail_encoder.parameters())


def test_save_load_round_trip(vae, tmp_path):
    model = DAVAE.from_base_vae(vae, detail_channels=48, order="detail_first")
    model.set_latent_stats([0.5] * 48, [2.0] * 48)
    model.save_pretrained(tmp_path / "davae")
    loaded = DAVAE.from_pretrained(tmp_path / "davae")
    assert loaded.config.detail_channels == 48 and loaded.config.order == "detail_first"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    torch.testing.assert_close(loaded.detail_latent_std, model.detail_latent_std)
    x = _images(1, 32)
    torch.testing.assert_close(loaded.decode(loaded.encode(x).latent_dist.mode()).sample,
                               model.decode(model.encode(x).latent_dist.mode()).sample)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ORDERS)
def test_fused_and_reference_agree(vae, order, device, no_tf32):
    require_ext()
    fused = DAVAE.from_base_vae(vae, detail_channels=48, order=order).to(device)
    ref = DAVAE.from_base_vae(vae, detail_channels=48, order=order).to(device)
    ref.load_state_dict(fused.state_dict())
    x = _images(2, 32).to(device)
    results = []
    for model, backend in ((fused, "fused"), (ref, "reference")):
        with davae_ext.use_backend(backend):
            out = model(x, generator=torch.Generator(device).manual_seed(3))
        loss = F.l1_loss(out.sample, x) + out.align_loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.align_loss.detach(), loss.detach(), grads))
    (a1, l1, g1), (a2, l2, g2) = results
    # CUDA: cuDNN's convolution backward may sum in another order from one model to the other.
    tol = {} if device == "cpu" else dict(rtol=1e-4, atol=1e-5)
    assert a1.device.type == device
    torch.testing.assert_close(a1, a2, **tol)
    torch.testing.assert_close(l1, l2, **tol)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], msg=n, **tol)


def test_normalisation_round_trip_and_calibration(vae):
    model = DAVAE.from_base_vae(vae, detail_channels=32)
    batches = [_images(2, 32, seed=s) for s in range(3)]
    mean, std = model.calibrate_latent_stats(batches)
    assert len(mean) == 32 and model.config.detail_mean == mean
    z = torch.cat([model.encode(b).latent_dist.mode() for b in batches])
    n = model.normalize_latents(z)
    torch.testing.assert_close(n[:, :16], z[:, :16])  # base slice untouched
    torch.testing.assert_close(n[:, 16:].mean((0, 2, 3)), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(n[:, 16:].std((0, 2, 3), unbiased=False), torch.ones(32), atol=1e-3, rtol=0)
    torch.testing.assert_close(model.denormalize_latents(n), z, atol=1e-5, rtol=1e-5)


def test_blocks_shortcuts():
    down = SpaceToChannelDown(64, 32, 2)  # 4*64 % 32 == 0: parameter-free group mean shortcut
    assert down.shortcut is None and down.group == 8
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.bias.zero_()
    h = torch.randn(1, 64, 8, 8)
    expected = F.pixel_unshuffle(h, 2).view(1, 32, 8, 4, 4).mean(2)
    torch.testing.assert_close(down(h), expected)
    assert SpaceToChannelDown(48, 40, 2).shortcut is not None  # 192 % 40 != 0: zero-init 1x1 conv
    up = ChannelToSpaceUp(32, 64, 2)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.bias.zero_()
    z = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(up(z), F.pixel_shuffle(z.repeat_interleave(8, 1), 2))


def test_bad_input(vae):
    model = DAVAE.from_base_vae(vae)
    with pytest.raises(ValueError, match=r"image size \(40, 40\) must be a multiple of the DA-VAE's spatial factor 16"):
        model.encode(_images(1, 40))
    with pytest.raises(ValueError, match=r"'image' must have shape \[B, 3, H, W\], got \[3, 32, 32\]"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"'latent' must have shape \[B, 32, h, w\]"):
        model.decode(torch.zeros(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r"'detail_channels' must be a positive multiple of the base VAE's latent channels C=16"):
        DAVAE.from_base_vae(vae, detail_channels=20)
    with pytest.raises(ValueError, match="'order' must be one of"):
        DAVAE.from_base_vae(vae, order="reverse")
    with pytest.raises(TypeError, match="must be a diffusers AutoencoderKL"):
        DAVAE.from_base_vae(torch.nn.Linear(2, 2))


def test_load_base_vae_errors(tmp_path, vae):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        davae_mod.load_base_vae(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a diffusers AutoencoderKL folder nor a pipeline folder"):
        davae_mod.load_base_vae(str(tmp_path / "empty"))
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    assert davae_mod.load_base_vae(str(tmp_path / "pipe")).config.latent_channels == 16


@pytest.mark.parametrize("order", ORDERS)
def test_up_block_starts_as_the_base_decoders_conv_in(vae, order):
    """init_up_block="base_decoder": the up block's output is the pretrained conv_in on the
    de-normalised base latent, nearest-upsampled (away from the border, where zero padding of the
    normalised latent differs), whatever the detail channels hold."""
    model = DAVAE.from_base_vae(vae, order=order)
    z = torch.randn(1, 32, 6, 6)
    base = z[:, :16] if order == "base_first" else z[:, 16:]
    expected = F.interpolate(vae.decoder.conv_in(base / 0.8 + 0.1), scale_factor=2, mode="nearest")
    got = model.latent_up(z)
    torch.testing.assert_close(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-5)
    fresh = DAVAE.from_base_vae(vae, order=order, init_up_block="random")
    assert not torch.allclose(fresh.latent_up(z), got)


def test_evaluation_baselines_are_the_base_vae_itself(vae):
    """evaluate_davae's baselines: (b) the base VAE's reconstruction of the half-size image,
    upsampled (from the DA-VAE's base channels, un-normalised, instead of a second encode), and
    (c) the base VAE at full size."""
    from davae_ext.training.evaluation import evaluate_davae, psnr

    model = DAVAE.from_base_vae(vae)
    x = _images(3, 32, seed=4)
    result = evaluate_davae(model, x, batch_size=2)
    with torch.no_grad():
        half = model.base_image(x)
        rec_half = vae.decode(vae.encode(half).latent_dist.mode()).sample
        rec_b = F.interpolate(rec_half, size=(32, 32), mode="bicubic", align_corners=False)
        rec_c = vae.decode(vae.encode(x).latent_dist.mode()).sample
    torch.testing.assert_close(result["images"]["base_half_upsampled"], rec_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result["images"]["base_full"], rec_c)
    assert abs(result["base_half_upsampled"]["psnr_db"] - psnr(rec_b, x)) < 1e-3
