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
