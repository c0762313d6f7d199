"""Sample class-conditional images with a DA-VAE DiT pipeline: 2x the resolution with the same tokens.

    python train/sample_dit.py                                    # the default fine-tuning run's pipeline, every class
    python train/sample_dit.py --pipeline DIR --classes 0,3 --per-class 8 --compare-native

Writes under --output-dir: one PNG per image, grid.png (one row per class) and samples.json (every
setting, the images/s). --compare-native also samples the same classes and seeds with the
pretrained native pipeline at the same output resolution (twice the token grid per side), reports
both throughputs and their ratio, and saves both grids (compare.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from davae_ext.training.cli import check_sample_dit, sample_dit_parser


def main(argv=None) -> dict:
    parser = sample_dit_parser(__doc__)
    args = check_sample_dit(parser, parser.parse_args(argv))
    from davae_ext.training import dit_sampling as ds
    from davae_ext.training.sampling import base_model_of

    progress = not args.no_progress
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    pipe = ds.load_pipeline(ds.ensure_pipeline(args.pipeline, progress), args.device, dtype, fused=args.fused)
    labels = ds.class_list(args.classes, pipe.classes)
    resolution = args.resolution or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    settings = dict(steps=args.steps, guidance=args.guidance, cfg_start=args.cfg_start, time_warp=args.time_warp)
    images, ips = ds.sample(pipe, labels, args.per_class, resolution, args.seed, args.batch_size, settings, progress)
    out = Path(args.output_dir)
    label = ds.row_label(pipe, resolution, ips)
    record = {"pipeline": args.pipeline, "classes": [pipe.classes[c] for c in labels], "per_class": args.per_class,
              "seed": args.seed, "resolution": resolution, "device": args.device, "dtype": str(dtype),
              "fused": args.fused, "tokens_per_image": ds.tokens(pipe, resolution), "images_per_s": ips,
              "settings": {k: v for k, v in settings.items() if v is not None},
              "files": ds.save_images(images, pipe, labels, args.per_class, out, label)}
    if args.compare_native:
        native = ds.load_native_pipeline(args.base_model or base_model_of(args.pipeline), args.device, dtype)
        native.sampling_defaults = pipe.sampling_defaults
        native_images, native_ips = ds.sample(native, labels, args.per_class, resolution, args.seed, args.batch_size,
                                              settings, progress)
        ds.save_comparison(out / "compare.png", images, native_images, pipe, labels, args.per_class, label,
                           ds.row_label(native, resolution, native_ips, "native"))
        record["native"] = {"images_per_s": native_ips, "tokens_per_image": ds.tokens(native, resolution)}
        record["speedup"] = ips / native_ips
        print(f"DA-VAE {ips:.3f} img/s ({record['tokens_per_image']} tokens) vs native {native_ips:.3f} img/s "
              f"({record['native']['tokens_per_image']} tokens): {record['speedup']:.2f}x")
    (out / "samples.json").write_text(json.dumps(record, indent=1))
    print(f"{len(images)} images at {resolution}x{resolution}, {ips:.3f} img/s: {out.resolve()}")
    return record


if __name__ == "__main__":
    main()
