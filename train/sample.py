"""Sample images with a DA-VAE SD3 or FLUX pipeline: scale x the resolution with the same tokens.

    python train/sample.py --prompt "a cat"                       # the default fine-tuning run's pipeline
    python train/sample.py --pipeline DIR --prompts prompts.txt --resolution 1024 --compare-native
    python train/sample.py --pipeline outputs/finetune_flux/pipeline --resolution 256   # finetune_flux.py's

Writes under --output-dir: one PNG per image, grid.png, and samples.json (every setting, the
images/s). --compare-native also samples the same prompts and seeds with the base pipeline at the
same output resolution (twice the token grid per side), reports both throughputs and their ratio,
and saves the two grids side by side (compare.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from davae_ext.training.cli import check_sample, sample_parser


def main(argv=None) -> dict:
    parser = sample_parser(__doc__)
    args = check_sample(parser, parser.parse_args(argv))
    from davae_ext.nn import set_fused
    from davae_ext.training import sampling

    progress = not args.no_progress
    prompts = sampling.prompts_of(args.prompt, args.prompts)
    pipe_dir = sampling.ensure_pipeline(args.pipeline, progress)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    davae_cls, base_cls = sampling.pipeline_classes(pipe_dir)
    pipe = sampling.load_pipeline(davae_cls, pipe_dir, args.device, dtype)
    chosen = sampling.resolve_settings(args, pipe)
    sampling.set_shift(pipe, chosen["shift"])
    set_fused(pipe.transformer, args.fused)
    resolution = args.resolution or pipe.default_sample_size * pipe.vae_scale_factor
    settings = dict(seed=args.seed, steps=chosen["steps"], guidance=chosen["guidance"], batch_size=args.batch_size,
                    negative_prompt=chosen["negative_prompt"], progress=progress, **sampling.call_options(pipe))
    images, ips = sampling.sample(pipe, prompts, resolution, label="DA-VAE", **settings)
    out = Path(args.output_dir)
    tokens = sampling.tokens_per_image(pipe, resolution)
    label = f"DA-VAE\n{resolution}x{resolution}\n{tokens} tokens\n{ips:.3f} img/s"
    files = sampling.save_images(images, prompts, out, label)
    record = {"pipeline": str(pipe_dir), "prompts": prompts, "seed": args.seed, **chosen, "resolution": resolution,
              "batch_size": args.batch_size, "fused": args.fused,
              "device": args.device, "dtype": str(dtype), "tokens_per_image": tokens, "images_per_s": ips, "files": files}
    if args.compare_native:
        base_dir = args.base_model or sampling.base_model_of(pipe_dir)
        native = sampling.load_pipeline(base_cls, base_dir, args.device, dtype, chosen["shift"])
        native_images, native_ips = sampling.sample(native, prompts, resolution, label="native", **settings)
        native_tokens = sampling.tokens_per_image(native, resolution)
        sampling.save_comparison(out / "compare.png", images, native_images, prompts, label,
                                 f"native\n{resolution}x{resolution}\n{native_tokens} tokens\n{native_ips:.3f} img/s")
        record["native"] = {"base_model": base_dir, "images_per_s": native_ips, "tokens_per_image": native_tokens}
        record["speedup"] = ips / native_ips
        print(f"DA-VAE {ips:.3f} img/s ({tokens} tokens) vs native {native_ips:.3f} img/s ({native_tokens} tokens): "
              f"{record['speedup']:.2f}x")
    (out / "samples.json").write_text(json.dumps(record, indent=1))
    print(f"{len(images)} images at {resolution}x{resolution}, {ips:.3f} img/s: {out.resolve()}")
    return record


if __name__ == "__main__":
    main()
