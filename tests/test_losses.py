"""davae_ext.models.losses: KL forms, alignment weight, LPIPS loading (local files only), PatchGAN."""

import pytest
import torch

from davae_ext.models import losses


def test_kl_forms():
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    terms = mean ** 2 + logvar.exp() - 1 - logvar
    torch.testing.assert_close(losses.kl_loss(mean, logvar, "sum"), 0.5 * terms.sum((1, 2, 3)).mean())
    torch.testing.assert_close(losses.kl_loss(mean, logvar, "mean"), terms.mean())
    pytest.importorskip("diffusers")
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    torch.testing.assert_close(losses.kl_loss(mean, logvar, "sum"), dist.kl().mean())
    with pytest.raises(ValueError, match="'form' must be one of"):
        losses.kl_loss(mean, logvar, "max")


def test_align_weight_modes():
    w = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(5, 3)
    rec = (x @ w.t()).pow(2).mean()
    align = (x @ w.t()).abs().mean()
    assert float(losses.AlignWeight(0.5, "constant")(rec, align, w)) == 0.5
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_al = torch.autograd.grad(align, w, retain_graph=True)[0]
    expected = 0.5 * g_rec.norm() / (g_al.norm() + 1e-4)
    torch.testing.assert_close(losses.AlignWeight(0.5, "adaptive")(rec, align, w), expected)
    with pytest.raises(ValueError, match="'mode' must be"):
        losses.AlignWeight(1.0, "cosine")


def _random_lpips_state(layout: str) -> dict:
    torch.manual_seed(0)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    state, i, c = {}, 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        key = f"features.{i}" if layout == "torchvision" else f"net.slice1.{i}"
        state[f"{key}.weight"] = torch.randn(v, c, 3, 3) * (2 / (9 * c)) ** 0.5
        state[f"{key}.bias"] = torch.zeros(v)
        c, i = v, i + 2
    for k, ch in enumerate([64, 128, 256, 512, 512]):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, ch, 1, 1)
    return state


@pytest.mark.parametrize("layout", ["torchvision", "lpips"])
def test_lpips_loads_local_weights(tmp_path, layout):
    path = tmp_path / "lpips.pth"
    torch.save(_random_lpips_state(layout), path)
    lp = losses.LPIPS(str(path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[1] = -y[1]
    d = lp(x, y)
    assert d.shape == (2,)
    assert d[0].abs() < 1e-6 and d[1] > 0  # zero for identical images, positive otherwise
    assert not any(p.requires_grad for p in lp.parameters())


def test_lpips_folder_layout_and_errors(tmp_path):
    state = _random_lpips_state("torchvision")
    (tmp_path / "w").mkdir()
    torch.save({k: v for k, v in state.items() if k.startswith("features")}, tmp_path / "w" / "vgg16.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "w" / "vgg.pth")
    losses.LPIPS(str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match="'weights' path .*missing.pth.* does not exist"):
        losses.LPIPS(str(tmp_path / "missing.pth"))
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not hold LPIPS-VGG16 weights"):
        losses.LPIPS(str(tmp_path / "partial.pth"))


def test_patch_discriminator_and_hinge():
    d = losses.PatchDiscriminator()
    logits = d(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    torch.testing.assert_close(losses.hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.5)))
    torch.testing.assert_close(losses.hinge_g_loss(fake), torch.tensor(1.0))
