"""Sample images with a DA-VAE SD3 pipeline: scale x the resolution with the same tokens.

    python train/sample.py --prompt "a cat"                       # the default fine-tuning run's pipeline
    python train/sample.py --pipeline DIR --prompts prompts.txt --resolution 1024 --compare-native

Writes under --output-dir: one PNG per image, grid.png, and samples.json (every setting, the
images/s). --compare-native also samples the same prompts and seeds with the base pipeline at the
same output resolution (twice the token grid per side), reports both throughputs and their ratio,
and saves the two grids side by side (compare.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DEFAULT_OUTPUT = "outputs/sample"
DEFAULT_PIPELINE = "outputs/finetune_sd35/pipeline"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--pipeline", default=DEFAULT_PIPELINE,
      help=f"DAVAEStableDiffusion3Pipeline folder (default: {DEFAULT_PIPELINE}, built by the default fine-tuning run if missing)")
    a("--prompt", action="append", default=None, help="a prompt (repeatable) (default: four fixed prompts)")
    a("--prompts", default=None, help="prompt file, one per line (default: none)")
    a("--negative-prompt", default=None, help="negative prompt for every image (default: none)")
    a("--seed", type=int, default=0, help="seed of image i is seed + i (default: 0)")
    a("--steps", type=int, default=30, help="denoising steps (default: 30)")
    a("--guidance", type=float, default=2.5, help="classifier-free guidance scale (default: 2.5)")
    a("--shift", type=float, default=4.0, help="scheduler timestep shift (default: 4.0)")
    a("--resolution", type=int, default=None, help="output size, e.g. 1024 or 2048 on SD3.5-M (default: the pipeline's own size)")
    a("--batch-size", type=int, default=4, help="images per pipeline call (default: 4)")
    a("--fused", action=argparse.BooleanOptionalAction, default=True, help="fused patch embedding (default: on)")
    a("--compare-native", action="store_true", help="also sample with the base pipeline at the same resolution (default: off)")
    a("--base-model", default=None, help="base SD3 pipeline for --compare-native (default: the one the fine-tuning run used)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if available)")
    a("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    a("--output-dir", default=DEFAULT_OUTPUT, help=f"where images and samples.json go (default: {DEFAULT_OUTPUT})")
    a("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p.parse_args(argv)


def run(pipe, prompts, args, resolution, label: str, progress: bool):
    """All prompts in batches; returns PIL images and images/s (the first batch, warm-up, included)."""
    from tqdm.auto import tqdm

    images = []
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    for i in tqdm(range(0, len(prompts), args.batch_size), desc=label, disable=not progress):
        chunk = prompts[i:i + args.batch_size]
        gens = [torch.Generator().manual_seed(args.seed + i + j) for j in range(len(chunk))]
        neg = [args.negative_prompt] * len(chunk) if args.negative_prompt else None
        images += pipe(chunk, negative_prompt=neg, height=resolution, width=resolution, num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=gens).images
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images, len(prompts) / (time.perf_counter() - start)


def grid(images, cols: int):
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (cols * w, rows * h), "white")
    for k, im in enumerate(images):
        g.paste(im, ((k % cols) * w, (k // cols) * h))
    return g


def main(argv=None) -> dict:
    args = parse_args(argv)
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from davae_ext.pipeline import DAVAEStableDiffusion3Pipeline

    prompts = list(args.prompt or [])
    if args.prompts:
        from davae_ext.synthetic import read_prompts

        prompts += read_prompts(args.prompts)
    if not prompts:
        from davae_ext.synthetic import DEFAULT_PROMPTS

        prompts = list(DEFAULT_PROMPTS)
    pipe_dir = Path(args.pipeline)
    if not (pipe_dir / "model_index.json").is_file():
        if args.pipeline != DEFAULT_PIPELINE:
            raise ValueError(f"--pipeline {args.pipeline!r} is not a pipeline folder (no model_index.json)")
        import importlib.util

        spec = importlib.util.spec_from_file_location("finetune_sd35", Path(__file__).with_name("finetune_sd35.py"))
        ft = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ft)
        ft.main(["--fused", "--output-dir", str(pipe_dir.parent)] + (["--no-progress"] if args.no_progress else []))
    index = json.loads((pipe_dir / "model_index.json").read_text())
    if index.get("vae", [None, None])[1] != "DAVAE":
        raise ValueError(f"--pipeline {args.pipeline!r} has no DA-VAE (its vae is {index.get('vae')}); "
                         "give a folder written by train/finetune_sd35.py")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    pipe = DAVAEStableDiffusion3Pipeline.from_pretrained(pipe_dir, torch_dtype=dtype).to(args.device)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=args.shift)
    pipe.transformer.pos_embed.fused = args.fused
    resolution = args.resolution or pipe.default_sample_size * pipe.vae_scale_factor
    progress = not args.no_progress
    images, ips = run(pipe, prompts, args, resolution, "DA-VAE", progress)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, im in enumerate(images):
        name = f"{k:04d}.png"
        im.save(out / name)
        files.append(name)
    g = grid(images, min(4, len(images)))
    g.save(out / "grid.png")
    tokens = (resolution // pipe.vae_scale_factor // pipe.patch_size) ** 2
    record = {"pipeline": str(pipe_dir), "prompts": prompts, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
              "shift": args.shift, "resolution": resolution, "batch_size": args.batch_size, "fused": args.fused,
              "device": args.device, "dtype": str(dtype), "tokens_per_image": tokens, "images_per_s": ips, "files": files}
    if args.compare_native:
        base_dir = args.base_model or _base_model_of(pipe_dir)
        native = StableDiffusion3Pipeline.from_pretrained(base_dir, torch_dtype=dtype).to(args.device)
        native.scheduler = FlowMatchEulerDiscreteScheduler.from_config(native.scheduler.config, shift=args.shift)
        native_images, native_ips = run(native, prompts, args, resolution, "native", progress)
        ng = grid(native_images, min(4, len(native_images)))
        from PIL import Image

        both = Image.new("RGB", (g.width + ng.width, max(g.height, ng.height)), "white")
        both.paste(g, (0, 0))
        both.paste(ng, (g.width, 0))
        both.save(out / "compare.png")
        native_tokens = (resolution // native.vae_scale_factor // native.patch_size) ** 2
        record["native"] = {"base_model": base_dir, "images_per_s": native_ips, "tokens_per_image": native_tokens}
        record["speedup"] = ips / native_ips
        print(f"DA-VAE {ips:.3f} img/s ({tokens} tokens) vs native {native_ips:.3f} img/s ({native_tokens} tokens): "
              f"{record['speedup']:.2f}x")
    (out / "samples.json").write_text(json.dumps(record, indent=1))
    print(f"{len(images)} images at {resolution}x{resolution}, {ips:.3f} img/s: {out.resolve()}")
    return record


def _base_model_of(pipe_dir: Path) -> str:
    args_file = pipe_dir.parent / "args.json"
    if args_file.is_file():
        model = json.loads(args_file.read_text()).get("model")
        if model:
            return model
    raise ValueError("--compare-native needs --base-model (the pipeline folder does not record its base model)")


if __name__ == "__main__":
    main()
