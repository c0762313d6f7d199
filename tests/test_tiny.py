"""The embedded tiny SD3.5-architecture pipeline (quick recipe), built offline."""

import json

import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("transformers")
from davae_ext.training import tiny  # noqa: E402
from davae_ext.training.cache import COMPLETE_MARKER  # noqa: E402


def test_quick_pipeline_loads_and_generates(quick_pipeline):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(quick_pipeline)
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8
    assert pipe.transformer.config.patch_size == 2 and pipe.transformer.config.qk_norm == "rms_norm"
    assert len(pipe.transformer.config.dual_attention_layers) >= 1
    image = pipe("a ginger cat", num_inference_steps=2, height=64, width=96, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 96, 3)
    log = json.loads((quick_pipeline / "training_log.json").read_text())
    assert log["vae_heldout_psnr_db"] > 0 and len(log["transformer_loss"]) == tiny.TinyRecipe.quick().transformer_steps
    assert (quick_pipeline / "training_loss.png").stat().st_size > 0


def test_quick_build_keeps_colour(quick_pipeline):
    """The held-out reconstructions of the quick build (60 VAE steps) keep colour. Bounds for the
    quick recipe: colourfulness >= 0.35x the originals' and mean colour error <= 0.06 (measured:
    0.46x / 0.50x and 0.033; the recipe that taught grey gave 0.14x / 0.24x and 0.095). The full
    build is held to 0.8-1.25x and 0.03 (docs/design.md)."""
    log = json.loads((quick_pipeline / "training_log.json").read_text())
    assert min(log["vae_heldout_colourfulness_ratio"]) >= 0.35, log["vae_heldout_colourfulness_ratio"]
    assert log["vae_heldout_mean_colour_error"] <= 0.06, log["vae_heldout_mean_colour_error"]


def test_patch_basis_is_a_whitened_pca():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 48) * 2 - 1
    full = tiny.PatchBasis(images, components=3 * 4 * 4, patch=4)
    codes = full.encode(images)
    assert codes.shape == (3, 48, 8, 12)
    torch.testing.assert_close(full.decode(codes), images, atol=1e-4, rtol=0)  # every component: lossless
    torch.testing.assert_close(codes.transpose(0, 1).reshape(48, -1).var(1), torch.ones(48), atol=1e-3, rtol=0)
    few = tiny.PatchBasis(images, components=4, patch=4)
    err_few = (few.decode(few.encode(images)) - images).pow(2).mean()
    assert 0 < err_few < images.var()  # the leading components explain part of the variance


def test_second_call_reuses_the_cache(quick_pipeline):
    marker = quick_pipeline / COMPLETE_MARKER
    before = marker.stat().st_mtime_ns
    assert tiny.build_tiny_sd35(quick=True, progress=False) == quick_pipeline
    assert marker.stat().st_mtime_ns == before


def test_incomplete_cache_is_rebuilt(tiny_cache, tmp_path):
    folder = tmp_path / "half-written"
    folder.mkdir()
    (folder / "model_index.json").write_text("{ truncated")
    recipe = tiny.TinyRecipe(vae_steps=1, transformer_steps=1, transformer_layers=1, crops_per_photo=1)
    assert tiny.build_tiny_sd35(str(folder), recipe=recipe, progress=False) == folder
    assert (folder / COMPLETE_MARKER).exists()
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
