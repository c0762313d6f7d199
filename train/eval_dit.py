"""Evaluate a DA-VAE DiT pipeline on a class-labelled folder: FID of generated images against the
real ones (a local Inception; nothing is downloaded) and the DA-VAE's reconstruction statistics.

    python train/eval_dit.py --inception inception-2015-12-05.pt      # the default fine-tuning run's pipeline
    python train/eval_dit.py --pipeline DIR --data IMAGEFOLDER --inception PT --per-class 50
    python train/eval_dit.py --no-fid                                 # reconstruction statistics only

Reconstruction: PSNR and SSIM of the DA-VAE round trip (posterior mode) on every real image, and,
with --inception, the reconstruction FID (rFID) and the feature statistics of real and
reconstructed images (fid_stats_*.npz: mu, sigma). Generation: --per-class images per class with
the pipeline's sampling settings, FID against the real images. Writes eval.json under --output-dir.
With a handful of images per class the FID is dominated by its small-sample bias: compare runs at
equal counts, never with published 50k-sample numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from davae_ext.training.cli import check_eval_dit, eval_dit_parser


def main(argv=None) -> dict:
    parser = eval_dit_parser(__doc__)
    args = check_eval_dit(parser, parser.parse_args(argv))
    from davae_ext.training import dit_sampling as ds
    from davae_ext.training import fid
    from davae_ext.training.data import ClassImageFolder, class_photos
    from davae_ext.training.evaluation import psnr, ssim

    progress = not args.no_progress
    pipe = ds.load_pipeline(args.pipeline, args.device, torch.float32)
    resolution = args.resolution or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    data = ClassImageFolder(args.data or class_photos(), resolution, center_crop=True, random_flip=False)
    real = torch.stack([data[i]["pixel_values"] for i in range(len(data))])
    with torch.no_grad():
        recs = torch.cat([pipe.vae.decode(pipe.vae.encode(real[i:i + args.batch_size].to(args.device)).latent_dist.mode())
                          .sample.float().cpu() for i in range(0, len(real), args.batch_size)])
    result = {"pipeline": args.pipeline, "images": len(real), "classes": data.classes, "resolution": resolution,
              "reconstruction": {"psnr_db": psnr(recs, real), "ssim": ssim(recs, real)}}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_fid:
        features = fid.load_inception(args.inception, args.device)
        batches = lambda x: (x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size))  # noqa: E731
        stats = {name: fid.feature_statistics(fid.features_of(features, batches(x))) for name, x in
                 (("real", real), ("reconstructed", recs))}
        labels = list(range(len(pipe.classes)))
        generated, ips = ds.sample(pipe, labels, args.per_class, resolution, args.seed, args.batch_size,
                                   dict(steps=args.steps, guidance=args.guidance), progress)
        stats["generated"] = fid.feature_statistics(fid.features_of(features, batches(generated)))
        for name, (mu, sigma) in stats.items():
            np.savez(out / f"fid_stats_{name}.npz", mu=mu, sigma=sigma)
        result["reconstruction"]["rfid"] = fid.frechet_distance(*stats["real"], *stats["reconstructed"])
        result["generation"] = {"fid": fid.frechet_distance(*stats["real"], *stats["generated"]),
                                "images": len(generated), "images_per_s": ips}
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
