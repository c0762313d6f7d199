"""The random-weight SD3.5-Medium folder tool at a reduced width: the real structure, loadable as a
diffusers pipeline, with the real text-embedding shapes."""

import pytest
import torch

pytest.importorskip("diffusers")


def test_reduced_width_folder_has_the_real_structure(tiny_cache, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from davae_ext.training.full_size import build_folder, transformer_config

    folder = build_folder(tmp_path / "sd35m", width_divisor=8)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    cfg = pipe.transformer.config
    full = transformer_config()
    for key in ("num_layers", "attention_head_dim", "patch_size", "joint_attention_dim", "pooled_projection_dim",
                "pos_embed_max_size", "qk_norm"):
        assert cfg[key] == full[key], key
    assert tuple(cfg.dual_attention_layers) == tuple(range(13)) and cfg.num_attention_heads == 3
    assert pipe.vae.config.shift_factor == 0.0609 and pipe.vae.config.scaling_factor == 1.5305
    assert pipe.scheduler.config.shift == 3.0
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", "a cat", "a cat", do_classifier_free_guidance=False)
    assert embeds.shape == (1, 77 + 256, 4096) and pooled.shape == (1, 2048)
    with torch.no_grad():
        latents = pipe("a cat", height=64, width=64, num_inference_steps=1, output_type="latent").images
    assert latents.shape == (1, 16, 8, 8) and torch.isfinite(latents).all()
