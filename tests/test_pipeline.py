"""DAVAEStableDiffusion3Pipeline on the quick tiny model, and train/sample.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import StableDiffusion3Pipeline  # noqa: E402

from davae_ext.models.davae import DAVAE  # noqa: E402
from davae_ext.models.pipeline import DAVAEStableDiffusion3Pipeline  # noqa: E402
from davae_ext.models.sd3 import expand_transformer  # noqa: E402


@pytest.fixture(scope="module")
def pipes(quick_pipeline):
    base = StableDiffusion3Pipeline.from_pretrained(quick_pipeline)
    base.set_progress_bar_config(disable=True)
    davae = DAVAE.from_base_vae(base.vae)
    davae.set_latent_stats([0.1] * 16, [1.5] * 16)
    transformer = expand_transformer(base.transformer, 16, fused=False)  # fused=False: bit-exact warm start
    pipe = DAVAEStableDiffusion3Pipeline.from_sd3_pipeline(base, transformer, davae)
    pipe.set_progress_bar_config(disable=True)
    return base, pipe


def _trajectory(pipe, latents, steps=4, guidance=2.0):
    seen = []

    def grab(_pipe, _i, _t, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs

    h = latents.shape[-1] * pipe.vae_scale_factor
    pipe("a cat", height=h, width=h, latents=latents.clone(), num_inference_steps=steps, guidance_scale=guidance,
         output_type="latent", callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"])
    return seen


def test_zero_init_trajectory_matches_the_base_pipeline(pipes):
    """Sec. 4.1 at sampling time: base channels follow the original pipeline step for step, the
    detail channels get zero velocity and stay at their initial noise."""
    base, pipe = pipes
    g = torch.Generator().manual_seed(0)
    base_noise, detail_noise = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    ours = _trajectory(pipe, torch.cat([base_noise, detail_noise], 1))
    ref = _trajectory(base, base_noise)
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a[:, :16], b, atol=1e-5, rtol=1e-5)
        assert torch.equal(a[:, 16:], detail_noise)


def test_images_latents_and_round_trip(pipes, tmp_path):
    _, pipe = pipes
    img = pipe("a cat", height=64, width=96, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(1)).images
    assert img.shape == (1, 64, 96, 3) and img.dtype == np.float32
    pil = pipe(["a cat", "a rocket"], height=64, width=64, num_inference_steps=2).images
    assert [im.size for im in pil] == [(64, 64), (64, 64)]
    lat = pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="latent").images
    assert lat.shape == (1, 32, 4, 4)
    pipe.save_pretrained(tmp_path / "p")
    loaded = DAVAEStableDiffusion3Pipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, DAVAE) and loaded.vae.config.detail_std == [1.5] * 16
    again = loaded("a cat", height=64, width=96, num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(1)).images
    np.testing.assert_allclose(again, img, atol=1e-5)


def test_prompt_embeds_without_text_encoders(pipes):
    base, pipe = pipes
    emb, neg, pooled, neg_pooled = base.encode_prompt("a cat", "a cat", "a cat")
    bare = DAVAEStableDiffusion3Pipeline(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae,
                                         text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                         text_encoder_3=None, tokenizer_3=None)
    bare.set_progress_bar_config(disable=True)
    out = bare(prompt_embeds=emb, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
               negative_pooled_prompt_embeds=neg_pooled, height=32, width=32, num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)


def test_bad_input(pipes, quick_pipeline):
    base, pipe = pipes
    with pytest.raises(ValueError, match="height and width must be multiples of 32"):
        pipe("a cat", height=48, width=64, num_inference_steps=1)
    with pytest.raises(TypeError, match="'vae' must be a davae_ext.DAVAE"):
        DAVAEStableDiffusion3Pipeline.from_sd3_pipeline(base, pipe.transformer, base.vae)
    script = Path(__file__).resolve().parents[1] / "train" / "sample.py"
    p = subprocess.run([sys.executable, str(script), "--pipeline", str(quick_pipeline), "--steps", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "expected a pipeline with a DA-VAE" in p.stderr


def test_sample_script(pipes, tmp_path):
    _, pipe = pipes
    pipe.save_pretrained(tmp_path / "pipe")
    script = Path(__file__).resolve().parents[1] / "train" / "sample.py"
    p = subprocess.run([sys.executable, str(script), "--pipeline", str(tmp_path / "pipe"), "--prompt", "a cat",
                        "--prompt", "a rocket", "--steps", "2", "--resolution", "64", "--batch-size", "2",
                        "--output-dir", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["files"] == ["0000.png", "0001.png"] and record["images_per_s"] > 0
    assert record["tokens_per_image"] == 4 and record["resolution"] == 64
    assert (tmp_path / "out" / "grid.png").exists()


def test_sampling_defaults_round_trip_and_apply(pipes, tmp_path):
    """A pipeline saved with sampling defaults reloads them; a call uses them for the steps and the
    negative prompt it is not given, and the call's own values win; sample.py records them."""
    _, pipe = pipes
    pipe.sampling_defaults = {"steps": 3, "guidance": 2.0, "shift": 2.5, "negative_prompt": "blurry", "recipe": "released"}
    try:
        pipe.save_pretrained(tmp_path / "pipe")
    finally:
        pipe.sampling_defaults = {}
    loaded = DAVAEStableDiffusion3Pipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_defaults["negative_prompt"] == "blurry"
    seen = {}

    def grab(_pipe, i, _t, kwargs):
        seen["steps"] = i + 1
        return kwargs

    lat = loaded("a cat", height=32, width=32, output_type="latent", callback_on_step_end=grab).images
    assert seen["steps"] == 3
    g = torch.Generator().manual_seed(0)
    given = loaded("a cat", height=32, width=32, output_type="latent", num_inference_steps=3,
                   negative_prompt="blurry", generator=g).images
    other = loaded("a cat", height=32, width=32, output_type="latent", num_inference_steps=3,
                   negative_prompt="sharp", generator=torch.Generator().manual_seed(0)).images
    default = loaded("a cat", height=32, width=32, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert lat.shape == default.shape
    torch.testing.assert_close(default, given)  # the stored negative prompt was used
    assert not torch.equal(default, other)
    script = Path(__file__).resolve().parents[1] / "train" / "sample.py"
    p = subprocess.run([sys.executable, str(script), "--pipeline", str(tmp_path / "pipe"), "--prompt", "a cat",
                        "--resolution", "32", "--output-dir", str(tmp_path / "out"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert (record["steps"], record["guidance"], record["shift"], record["negative_prompt"]) == (3, 2.0, 2.5, "blurry")
