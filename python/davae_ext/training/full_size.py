"""Real sizes without downloads: SD3.5-Medium (and SD3.5-Large's transformer) built from their
published configs with random weights, for proving shapes, memory and code paths at full size.

    python -m davae_ext.training.full_size --output-dir DIR [--width-divisor N] [--dtype float32]

writes a ``StableDiffusion3Pipeline`` folder in diffusers' layout:

- ``transformer``: ``SD3Transformer2DModel`` with SD3.5-Medium's config (24 joint blocks, hidden
  1536 = 24 heads of 64, patch 2, dual attention in blocks 0-12, qk RMS norm,
  ``pos_embed_max_size`` 384, joint attention dim 4096, pooled 2048): 2.243B parameters plus the
  384 x 384 x 1536 positional table (SD3.5-Large's transformer, built on the meta device by
  :func:`parameter_counts`: 8.057B).
- ``vae``: the 16-channel SD3 ``AutoencoderKL`` (shift 0.0609, scale 1.5305, no quant convs).
- ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with shift 3.0.
- text encoders reduced to the smallest that produce the real shapes: CLIP-L (hidden and
  projection 768) and CLIP-G (1280; pooled together 2048) and T5 (d_model 4096), one layer each,
  small feed-forward widths, with the character-level / caption-trained tokenizers of the tiny
  model (vocabularies of hundreds, not 49k / 32k). What the transformer sees (77 + 256 tokens of
  4096, a pooled 2048) is what it sees from the real encoders; their own compute and memory are
  not, and the fine-tuning scripts cache text embeddings once anyway.

``--width-divisor N`` divides the transformer's head count and the VAE's widths by N (the tests'
reduced-width folder, with the real structure: 24 blocks, dual attention, qk norm, the positional
table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Optional

SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD35_LARGE_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
    pos_embed_max_size=192, dual_attention_layers=(), qk_norm="rms_norm",
)
SD3_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
    shift_factor=0.0609, scaling_factor=1.5305,
)
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 768, 1280, 4096


def transformer_config(width_divisor: int = 1, large: bool = False) -> dict:
    cfg = dict(SD35_LARGE_TRANSFORMER if large else SD35_MEDIUM_TRANSFORMER)
    if width_divisor > 1:
        heads = max(cfg["num_attention_heads"] // width_divisor, 1)
        cfg.update(num_attention_heads=heads, caption_projection_dim=heads * cfg["attention_head_dim"])
    return cfg


def vae_config(width_divisor: int = 1) -> dict:
    cfg = dict(SD3_VAE)
    if width_divisor > 1:
        widths = tuple(max(w // width_divisor, 32) for w in cfg["block_out_channels"])
        cfg.update(block_out_channels=widths)
    return cfg


def build_text_encoders(clip_vocab: int, t5_vocab: int):
    """CLIP-L, CLIP-G and T5 encoders with the real output widths and one layer each."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(hidden: int, heads: int):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=hidden, intermediate_size=64, num_attention_heads=heads, num_hidden_layers=1,
            vocab_size=clip_vocab, projection_dim=hidden, max_position_embeddings=77, bos_token_id=clip_vocab - 2,
            eos_token_id=clip_vocab - 1, pad_token_id=clip_vocab - 1))

    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=T5_WIDTH, d_kv=64, d_ff=64, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0,
                                 pad_token_id=0, eos_token_id=1))
    return clip(CLIP_L_WIDTH, 12), clip(CLIP_G_WIDTH, 20), t5


def build_folder(path, width_divisor: int = 1, dtype: str = "float32", seed: int = 0) -> Path:
    """Write the random-weight pipeline folder (see the module docstring); returns it."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from .data import sample_photos
    from .tiny import build_clip_tokenizer, build_t5_tokenizer

    folder = Path(path)
    captions = [json.loads(line)["text"] for line in (sample_photos("all") / "metadata.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as scratch:  # the tokenizers' files; save_pretrained writes them again
        clip_tok = build_clip_tokenizer(Path(scratch) / "clip")
        t5_tok = build_t5_tokenizer(captions, Path(scratch) / "t5")
    torch.manual_seed(seed)
    clip_l, clip_g, t5 = build_text_encoders(len(clip_tok), len(t5_tok))
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**transformer_config(width_divisor)), vae=AutoencoderKL(**vae_config(width_divisor)),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder=clip_l, tokenizer=clip_tok,
        text_encoder_2=clip_g, tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=t5_tok,
    )
    pipe.tokenizer_3.model_max_length = 256
    pipe.to(getattr(torch, dtype))
    pipe.save_pretrained(folder)
    return folder


def parameter_counts(large: bool = False) -> dict:
    """Parameters of the transformer (built on the meta device: nothing is allocated), by part."""
    import torch
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**transformer_config(large=large))
    total = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer_blocks."))
    return {"total": total, "blocks": blocks, "layers": model.config.num_layers,
            "hidden": model.config.num_attention_heads * model.config.attention_head_dim}


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m davae_ext.training.full_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="the pipeline folder to write")
    parser.add_argument("--width-divisor", type=int, default=1,
                        help="divide the transformer's heads and the VAE's widths by this (default: 1, full size)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of the saved weights (default: float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = parser.parse_args(argv)
    folder = build_folder(args.output_dir, args.width_divisor, args.dtype, args.seed)
    print(f"random-weight SD3.5-Medium pipeline folder: {folder.resolve()}")


if __name__ == "__main__":
    main()
