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

import json
from pathlib import Path

from davae_ext.training.cli import check_eval_vae, eval_vae_parser


def main(argv=None) -> dict:
    parser = eval_vae_parser(__doc__)
    args = check_eval_vae(parser, parser.parse_args(argv))
    from davae_ext.training.data import sample_photos
    from davae_ext.models.davae import DAVAE
    from davae_ext.training.evaluation import evaluate_davae, format_table, load_images, save_reconstruction_grid
    from davae_ext.models.losses import LPIPS

    model = DAVAE.from_pretrained(args.davae).to(args.device)
    images = load_images(args.data or sample_photos("eval"), args.resolution, args.limit)
    lpips = LPIPS(args.lpips_weights).to(args.device) if args.lpips_weights else None
    result = evaluate_davae(model, images, args.batch_size, lpips=lpips)
    recs = result.pop("images")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["davae_path"] = str(args.davae)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    save_reconstruction_grid(out / "reconstructions.png", images, result, recs,
                             rows=("base_half_upsampled", "davae", "base_full"))
    print(format_table(result))
    print(f"written: {out / 'eval.json'}, {out / 'reconstructions.png'}")
    return result


if __name__ == "__main__":
    main()
