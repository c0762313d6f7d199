"""Evaluate a DA-VAE on held-out images at full resolution.

    python train/eval_vae.py --davae outputs/train_vae/davae
    python train/eval_vae.py --davae DIR --data DIR --resolution 1024 --lpips-weights PATH

Reports PSNR and SSIM (and LPIPS with --lpips-weights) for
  (a) the DA-VAE,
  (b) the base VAE on the x1/2 image, upsampled bicubically (the same token count),
  (c) the base VAE at full resolution (4x the tokens),
plus the alignment statistics (MSE and cosine similarity between Proj(z_d) and z). Prints a table
and writes eval.json and a PNG grid (rows: input, (b), (a), (c)) under --output-dir.
rFID is not computed (it needs Inception weights and thousands of images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DEFAULT_OUTPUT = "outputs/eval_vae"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davae", default="outputs/train_vae/davae",
                   help="DA-VAE folder written by train_vae.py (default: outputs/train_vae/davae)")
    p.add_argument("--data", default=None, help="held-out image folder (default: the shipped photos' held-out split)")
    p.add_argument("--resolution", type=int, default=256, help="evaluation image size, centre crops (default: 256)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images (default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    p.add_argument("--lpips-weights", default=None, help="local LPIPS-VGG16 weights; adds LPIPS (default: off)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if available)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT, help=f"where eval.json and the grid go (default: {DEFAULT_OUTPUT})")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from davae_ext.training.data import sample_photos
    from davae_ext.models.davae import DAVAE
    from davae_ext.training.evaluation import evaluate_davae, format_table, load_images
    from davae_ext.models.losses import LPIPS
    from davae_ext.training.common import save_grid

    if not (Path(args.davae) / "config.json").exists():
        raise FileNotFoundError(f"--davae {args.davae!r} is not a DA-VAE folder (no config.json); train one with train/train_vae.py")
    model = DAVAE.from_pretrained(args.davae).to(args.device)
    images = load_images(args.data or sample_photos("eval"), args.resolution, args.limit)
    lpips = LPIPS(args.lpips_weights).to(args.device) if args.lpips_weights else None
    result = evaluate_davae(model, images, args.batch_size, lpips=lpips)
    recs = result.pop("images")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["davae_path"] = str(args.davae)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    save_grid(out / "reconstructions.png", [images, recs["base_half_upsampled"], recs["davae"], recs["base_full"]])
    print(format_table(result))
    print(f"written: {out / 'eval.json'}, {out / 'reconstructions.png'}")
    return result


if __name__ == "__main__":
    main()
