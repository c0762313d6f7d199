"""Generate a fine-tuning set with a base SD3 pipeline (the paper fine-tunes on images the base
model generates): one PNG and one metadata.jsonl line per sample, resumable (samples already
written are kept, so a killed run continues where it stopped).

    python train/make_synthetic_data.py --prompts prompts.txt --count 1000 --resolution 1024
    python train/make_synthetic_data.py --count 16          # embedded tiny pipeline, fixed prompts
"""

from __future__ import annotations

import argparse

import torch

DEFAULT_OUTPUT = "outputs/synthetic"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="SD3 pipeline folder (default: the embedded tiny SD3.5 pipeline)")
    p.add_argument("--prompts", default=None, help="prompt file, one per line, cycled (default: four fixed prompts)")
    p.add_argument("--count", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the pipeline's own)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    p.add_argument("--guidance", type=float, default=2.5, help="CFG scale (default: 2.5)")
    p.add_argument("--batch-size", type=int, default=4, help="images per call (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if available)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT, help=f"image folder to write (default: {DEFAULT_OUTPUT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import StableDiffusion3Pipeline

    from davae_ext.training.synthetic import DEFAULT_PROMPTS, generate, read_prompts

    model = args.model
    if model is None:
        from davae_ext.training.tiny import build_tiny_sd35

        model = str(build_tiny_sd35(progress=not args.no_progress))
    pipe = StableDiffusion3Pipeline.from_pretrained(model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    resolution = args.resolution or pipe.default_sample_size * pipe.vae_scale_factor
    prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
    folder = generate(pipe, prompts, args.count, args.output_dir, resolution, args.steps, args.guidance, args.seed,
                      args.batch_size, progress=not args.no_progress)
    print(f"{args.count} images in {folder}")
    return folder


if __name__ == "__main__":
    main()
