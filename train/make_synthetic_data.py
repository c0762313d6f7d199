"""Generate a fine-tuning set with a base SD3 pipeline (the paper fine-tunes on images the base
model generates): one PNG and one metadata.jsonl line per sample, resumable (samples already
written are kept, so a killed run continues where it stopped).

    python train/make_synthetic_data.py --prompts prompts.txt --count 1000 --resolution 1024
    python train/make_synthetic_data.py --count 16          # embedded tiny pipeline, fixed prompts
"""

from __future__ import annotations

from davae_ext.training.cli import check_synthetic, synthetic_parser


def main(argv=None):
    parser = synthetic_parser(__doc__)
    args = check_synthetic(parser, parser.parse_args(argv))
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
