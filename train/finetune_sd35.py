"""Fine-tune an SD3 / SD3.5 transformer on a DA-VAE latent (paper Sec. 4): 2x the resolution with
the same number of tokens.

    python train/finetune_sd35.py --fused                     # embedded tiny SD3.5 + tiny DA-VAE, shipped photos
    python train/finetune_sd35.py --model SD35M_DIR --davae DAVAE_DIR --data DIR --mixed-precision bf16 --fused
    python train/finetune_sd35.py --synthetic 1000 --prompts prompts.txt ...   # train on base-model images
    accelerate launch train/finetune_sd35.py ...  /  torchrun --nproc_per_node 2 train/finetune_sd35.py ...

The transformer is widened with davae_ext.sd3.expand_transformer(init="zero"): at step 0 it is the
pretrained model on the base channels and predicts 0 for the detail channels (the script checks
this on the first batch and records it in summary.json). The patch embedder and output head train
in full, the rest through LoRA (rank / alpha 256 on to_q, to_k, to_v, to_out.0, ff.net.2,
norm1.linear) or fully with --full. Objective: SD3 rectified flow with logit-normal timesteps on
the shifted schedule (shift 4.0), 10% prompt dropout, the detail channels' weight ramped by Eq. 12
and normalised by Eq. 13 (--loss-mode x0_min_snr: the released code's variant). DA-VAE latents and
text embeddings are computed once per (model, DA-VAE, data) and cached on disk.

Writes under --output-dir: log.csv, checkpoints/ (atomic; --resume continues exactly),
loss_curves.png (base and detail channels), samples.png (fixed prompts, 2x resolution, EMA
weights), summary.json and pipeline/ (a DAVAEStableDiffusion3Pipeline folder for train/sample.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

DEFAULT_OUTPUT = "outputs/finetune_sd35"
DEFAULT_DAVAE_VERSION = "default-davae-v1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=None, help="diffusers SD3 / SD3.5 pipeline folder (default: the embedded tiny SD3.5 pipeline, built on first use)")
    a("--davae", default=None, help="DA-VAE folder from train/train_vae.py (default: one trained on first use on --model's VAE by train_vae.py, 300 steps, with --mixed-precision, and cached)")
    a("--data", default=None, help="image folder with captions (default: the shipped photos, training split)")
    a("--synthetic", type=int, default=0, help="first generate this many training images with the base pipeline (default: 0 = use --data)")
    a("--prompts", default=None, help="prompt file for --synthetic, one per line (default: the shipped photos' captions)")
    a("--resolution", type=int, default=None, help="training image size (default: the transformer's sample size x the DA-VAE factor)")
    a("--crops-per-image", type=int, default=4, help="random crops / flips cached per image (default: 4)")
    a("--output-dir", default=DEFAULT_OUTPUT, help=f"where everything is written (default: {DEFAULT_OUTPUT})")
    a("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    a("--batch-size", type=int, default=8, help="global batch size, split over processes (default: 8)")
    a("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    a("--full", action="store_true", help="train every transformer weight instead of LoRA (default: LoRA)")
    a("--lora-rank", type=int, default=256, help="LoRA rank (default: 256)")
    a("--lora-alpha", type=float, default=256, help="LoRA alpha (default: 256)")
    a("--lora-targets", default="to_q,to_k,to_v,to_out.0,ff.net.2,norm1.linear",
      help="comma-separated LoRA target modules (default: to_q,to_k,to_v,to_out.0,ff.net.2,norm1.linear)")
    a("--shift", type=float, default=4.0, help="timestep shift of the training schedule (default: 4.0)")
    a("--caption-dropout", type=float, default=0.1, help="probability of the empty prompt (default: 0.1)")
    a("--n-warm", type=int, default=None, help="N_warm of Eq. 12 in steps (default: min(10000, steps / 2))")
    a("--loss-mode", choices=["velocity", "x0_min_snr"], default="velocity",
      help="Eq. 13 on the velocity, or the released code's x0 + min-SNR variant (default: velocity)")
    a("--min-snr-gamma", type=float, default=5.0, help="gamma of --loss-mode x0_min_snr (default: 5.0)")
    a("--ema-decay", type=float, default=0.999, help="EMA decay of the trainable weights, used for sampling (default: 0.999)")
    a("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: 1.0)")
    a("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="autocast precision, also of the default DA-VAE's training (default: no)")
    a("--gradient-checkpointing", action="store_true", help="recompute activations in backward (default: off)")
    a("--fused", action="store_true", help="patch embedding and latent concatenation through the fused kernels (default: reference PyTorch)")
    a("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    a("--keep-checkpoints", type=int, default=2, help="checkpoints kept (default: 2)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (default: off)")
    a("--stop-at", type=int, default=None,
      help="stop after this step as if the run were killed (checkpoint written there); to test --resume (default: off)")
    a("--seed", type=int, default=0, help="seed (default: 0)")
    a("--sample-steps", type=int, default=20, help="denoising steps of the final sample grid (default: 20)")
    a("--guidance", type=float, default=2.5, help="CFG scale of the final sample grid (default: 2.5)")
    a("--no-sample", action="store_true", help="skip the final sample grid and pipeline folder (default: write them)")
    a("--quick-default", action="store_true", help="with no --model / --davae, use the quick tiny models (tests) (default: off)")
    a("--no-progress", action="store_true", help="no tqdm progress bar (default: shown)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def check_sd3_pipeline(path: str) -> None:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"--model {path!r} is not a diffusers pipeline folder (no model_index.json)")
    cls = json.loads(index.read_text()).get("_class_name", "")
    tcfg = Path(path) / "transformer" / "config.json"
    tcls = json.loads(tcfg.read_text()).get("_class_name", "") if tcfg.is_file() else ""
    if "StableDiffusion3" not in cls or tcls != "SD3Transformer2DModel":
        raise ValueError(f"--model {path!r} is not an SD3 pipeline: model_index.json names {cls!r} and the transformer "
                         f"is {tcls or 'missing'!r} (expected a StableDiffusion3Pipeline with an SD3Transformer2DModel)")


def default_davae(model: str, quick: bool, progress: bool, mixed_precision: str = "no") -> str:
    """A DA-VAE on ``model``'s VAE, trained on first use by train_vae.py and cached under a key of
    the model folder and its VAE's config and weights (another model never reuses it).
    train_vae.py runs in this process, whose accelerate state is already set: it trains with the
    same ``mixed_precision`` (accelerate refuses a second, different one), which is part of the key."""
    import importlib.util

    from davae_ext._cache import atomic_dir, cache_root, is_complete

    h = hashlib.sha256(str(Path(model).resolve()).encode())
    for f in sorted((Path(model) / "vae").glob("*")):
        h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    precision = "" if mixed_precision == "no" else f"-{mixed_precision}"
    folder = cache_root() / f"{DEFAULT_DAVAE_VERSION}{'-quick' if quick else ''}{precision}-{h.hexdigest()[:12]}"
    if is_complete(folder):
        return str(folder / "davae")
    spec = importlib.util.spec_from_file_location("train_vae", Path(__file__).with_name("train_vae.py"))
    train_vae = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_vae)
    recipe = ["--steps", "4", "--resolution", "32", "--batch-size", "2", "--eval-images", "2"] if quick else \
             ["--steps", "300"]  # train_vae.py's defaults otherwise
    with atomic_dir(folder) as tmp:
        train_vae.main(["--base-vae", model, "--output-dir", str(tmp), *recipe, "--fused",
                        "--mixed-precision", mixed_precision] + ([] if progress else ["--no-progress"]))
    return str(folder / "davae")


def cache_key(model: str, davae: str, data: str, resolution: int, crops: int, seed: int) -> str:
    h = hashlib.sha256()
    for folder in (model, davae):
        for cfg in sorted(Path(folder).rglob("*.json")):
            h.update(str(cfg.relative_to(folder)).encode() + cfg.read_bytes())
        for w in sorted(Path(folder).rglob("*.safetensors")):
            st = w.stat()
            h.update(f"{w.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in sorted(Path(data).iterdir()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"{resolution}:{crops}:{seed}:v1".encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def build_cache(model: str, davae, data: str, resolution: int, crops: int, seed: int, folder: Path, progress: bool) -> None:
    """DA-VAE latents (normalised; base and detail stored apart) of ``crops`` random crops/flips
    per image, and the text embeddings of every caption plus the empty prompt."""
    from diffusers import StableDiffusion3Pipeline
    from tqdm.auto import tqdm

    from davae_ext.data import ImageCaptionFolder

    ds = ImageCaptionFolder(data, resolution, seed=seed)
    base, detail, captions = [], [], []
    for _ in tqdm(range(crops), desc="caching DA-VAE latents", disable=not progress):
        for i in range(len(ds)):
            item = ds[i]
            z = davae.normalize_latents(davae.encode(item["pixel_values"][None].to(davae.device)).latent_dist.mode())
            b, d = davae.split_latents(z)
            base.append(b.cpu())
            detail.append(d.cpu())
            captions.append(item["caption"])
    unique = sorted(set(captions)) + [""]
    pipe = StableDiffusion3Pipeline.from_pretrained(model, transformer=None, vae=None)
    embeds, pooled = [], []
    for i in range(0, len(unique), 8):
        chunk = unique[i:i + 8]
        e, _, p, _ = pipe.encode_prompt(chunk, chunk, chunk, do_classifier_free_guidance=False)
        embeds.append(e.cpu())
        pooled.append(p.cpu())
    index = {c: i for i, c in enumerate(unique)}
    torch.save({"base": torch.cat(base), "detail": torch.cat(detail), "caption_index": torch.tensor([index[c] for c in captions]),
                "captions": unique, "prompt_embeds": torch.cat(embeds), "pooled": torch.cat(pooled)},
               folder / "cache.pt")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm.auto import tqdm

    from davae_ext import ops, reference
    from davae_ext._cache import atomic_dir, cache_root, is_complete
    from davae_ext._plot import save_curves
    from davae_ext.data import sample_photos
    from davae_ext.davae import DAVAE
    from davae_ext.flow import detail_weight, flow_loss, sample_sigmas
    from davae_ext.lora import add_lora, merge_lora
    from davae_ext.sd3 import expand_transformer
    from davae_ext.training import (EMA, CSVLog, batch_indices, csv_column, fingerprint, latest_checkpoint, load_checkpoint,
                                    make_accelerator, save_checkpoint, step_generator, trainable_state,
                                    write_rank_fingerprint)
    from diffusers import SD3Transformer2DModel

    out = Path(args.output_dir)
    accelerator, rank, world, main_proc = make_accelerator(args.mixed_precision)
    progress = not args.no_progress and main_proc
    torch.manual_seed(args.seed)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the process count {world}")

    # ------------------------------------------------------------------ models (checked first)
    # First-use builds: the main process builds and caches, then the others read the cache.
    if args.model is None:
        from davae_ext.tiny import build_tiny_sd35

        with accelerator.main_process_first():
            args.model = str(build_tiny_sd35(quick=args.quick_default, progress=progress))
    check_sd3_pipeline(args.model)
    if args.davae is None:
        with accelerator.main_process_first():
            args.davae = default_davae(args.model, args.quick_default, progress, args.mixed_precision)
    if not (Path(args.davae) / "config.json").is_file():
        raise ValueError(f"--davae {args.davae!r} is not a DA-VAE folder (no config.json); train one with train/train_vae.py")
    davae = DAVAE.from_pretrained(args.davae).to(accelerator.device).eval()
    davae.requires_grad_(False)
    original = SD3Transformer2DModel.from_pretrained(args.model, subfolder="transformer")
    C_tr = original.config.in_channels
    if davae.base_channels != C_tr:
        raise ValueError(f"--davae {args.davae!r} has {davae.base_channels} base channels but the transformer of "
                         f"--model {args.model!r} has {C_tr} latent channels; they must match")
    if davae.config.detail_mean is None:
        raise ValueError(f"--davae {args.davae!r} has no detail latent statistics (run calibrate_latent_stats, "
                         "as train_vae.py does at the end)")
    resolution = args.resolution or original.config.sample_size * davae.spatial_factor
    if resolution % (davae.spatial_factor * original.config.patch_size):
        raise ValueError(f"--resolution {resolution} must be a multiple of {davae.spatial_factor * original.config.patch_size} "
                         f"(DA-VAE factor x patch size)")

    # ------------------------------------------------------------------ data and cache
    data = args.data or str(sample_photos("train"))
    if args.synthetic > 0:
        data = str(out / "synthetic")
        if main_proc:
            from diffusers import StableDiffusion3Pipeline

            from davae_ext.synthetic import DEFAULT_PROMPTS, generate, read_prompts

            prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
            base_pipe = StableDiffusion3Pipeline.from_pretrained(args.model).to(accelerator.device)
            generate(base_pipe, prompts, args.synthetic, data, resolution, seed=args.seed, progress=progress)
            del base_pipe
        accelerator.wait_for_everyone()
    key = cache_key(args.model, args.davae, data, resolution, args.crops_per_image, args.seed)
    cache_dir = cache_root() / "finetune_cache" / key
    with accelerator.main_process_first():
        cache_reused = is_complete(cache_dir)
        if not cache_reused:
            with atomic_dir(cache_dir) as tmp:
                build_cache(args.model, davae, data, resolution, args.crops_per_image, args.seed, tmp, progress)
    cache = torch.load(cache_dir / "cache.pt", map_location="cpu")
    accelerator.print(f"latent / text cache {'reused' if cache_reused else 'built'}: {cache_dir}")
    n_items = len(cache["base"])

    # ------------------------------------------------------------------ model
    # The DA-VAE is not needed during training (the latents are cached); finish() reloads it.
    order, C, D = davae.config.order, davae.base_channels, davae.detail_channels
    del davae

    def split(z):  # (base, detail), as DAVAE.split_latents
        return (z[:, :C], z[:, C:]) if order == "base_first" else (z[:, -C:], z[:, :-C])

    transformer = expand_transformer(original, D, init="zero", order=order, fused=args.fused)
    if args.full:
        transformer.requires_grad_(True)
    else:
        add_lora(transformer, args.lora_rank, args.lora_alpha, [t for t in args.lora_targets.split(",") if t])
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    named_trainable = lambda m: [(n, p) for n, p in m.named_parameters() if p.requires_grad]  # noqa: E731
    ema = EMA(named_trainable(transformer), args.ema_decay)
    opt = torch.optim.AdamW([p for _, p in named_trainable(transformer)], lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    n_warm = args.n_warm if args.n_warm is not None else min(10000, args.steps // 2)
    concat = (ops if args.fused else reference).latent_concat

    def batch(step: int):
        idx = batch_indices(n_items, args.batch_size, args.seed, step, rank, world)
        x0 = concat(cache["base"][idx], cache["detail"][idx], order=order)
        g = step_generator(args.seed, step, rank)
        keys = cache["caption_index"][idx].clone()
        drop = torch.rand(len(idx), generator=g) < args.caption_dropout
        keys[drop] = len(cache["captions"]) - 1  # the empty prompt
        sigmas = sample_sigmas(len(idx), args.shift, g)
        noise = torch.randn(x0.shape, generator=g)
        dev = accelerator.device
        return (x0.to(dev), noise.to(dev), sigmas.to(dev), cache["prompt_embeds"][keys].to(dev), cache["pooled"][keys].to(dev))

    # Step 0 is the pretrained model (Sec. 4.1): checked on the first batch before any update.
    summary: dict = {"model": args.model, "davae": args.davae, "resolution": resolution, "n_warm": n_warm,
                     "trainable_parameters": sum(p.numel() for _, p in named_trainable(transformer)), "cache_reused": cache_reused}
    start = 0
    ckpt_dir = out / "checkpoints"
    if args.resume and (path := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(path)
        transformer.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start = int(state["step"])
        summary["step0"] = state.get("step0")
        accelerator.print(f"resumed from {path} at step {start}")
    else:
        x0, noise, sigmas, emb, pooled = batch(0)
        with torch.no_grad():
            xt = (1 - sigmas.view(-1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1) * noise
            t = sigmas * 1000
            pred = transformer.to(accelerator.device)(xt, emb, pooled, t).sample
            base_x0, _ = split(x0)
            base_xt, _ = split(xt)
            base_noise, _ = split(noise)
            ref = original.to(accelerator.device)(base_xt, emb, pooled, t).sample
            pred_base, pred_detail = split(pred)
            summary["step0"] = {
                "max_abs_diff_base_prediction": float((pred_base - ref).abs().max()),
                "max_abs_detail_prediction": float(pred_detail.abs().max()),
                "base_loss_expanded": float(flow_loss(pred, x0, noise, sigmas, C, order, w=0.0)["loss"]),
                "base_loss_original": float(((ref - (base_noise - base_x0)) ** 2).mean()),
            }
        accelerator.print(f"step 0: {summary['step0']}")
    del original

    transformer, opt = accelerator.prepare(transformer, opt)
    core = accelerator.unwrap_model(transformer)
    fields = ["step", "loss", "base_mse", "detail_mse", "detail_weight", "steps_per_s", "seconds"]
    log = CSVLog(out / "log.csv", fields, resume_step=start, enabled=main_proc)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args) | {"processes": world}, indent=1))

    transformer.train()
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="fine-tune", disable=not progress)
    for step in bar:
        w = detail_weight(step, n_warm)
        x0, noise, sigmas, emb, pooled = batch(step)
        s = sigmas.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        with accelerator.autocast():
            pred = transformer(xt, emb, pooled, sigmas * 1000).sample
        parts = flow_loss(pred.float(), x0, noise, sigmas, C, order, w, args.loss_mode, args.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(parts["loss"])
        if args.grad_clip > 0:
            accelerator.clip_grad_norm_([p for _, p in named_trainable(core)], args.grad_clip)
        opt.step()
        ema.update(named_trainable(core))
        elapsed = time.time() - t0
        row = {"step": step, "loss": parts["loss"].item(), "base_mse": parts["base_mse"].item(),
               "detail_mse": parts["detail_mse"].item(), "detail_weight": w,
               "steps_per_s": (step + 1 - start) / max(elapsed, 1e-9), "seconds": round(elapsed, 3)}
        log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", w=f"{w:.3f}", it_s=f"{row['steps_per_s']:.2f}")
        done = step + 1
        stop = args.stop_at is not None and done >= args.stop_at
        if main_proc and (done % args.checkpoint_every == 0 or done == args.steps or stop):
            save_checkpoint(ckpt_dir, done, {"model": trainable_state(core), "optimizer": opt.state_dict(),
                                             "ema": ema.state_dict(), "step0": summary.get("step0")},
                            keep=args.keep_checkpoints)
        if stop:
            accelerator.print(f"--stop-at {args.stop_at}: stopping as if killed")
            accelerator.end_training()
            return summary
    accelerator.wait_for_everyone()
    summary.update(steps=args.steps, processes=world, seconds=round(time.time() - t0, 2), fingerprint=fingerprint(core))
    write_rank_fingerprint(out, rank, world, summary["fingerprint"])
    if main_proc:
        save_curves(out / "loss_curves.png", {"base channels (MSE)": csv_column(out / "log.csv", "base_mse"),
                                              "detail channels (MSE)": csv_column(out / "log.csv", "detail_mse")},
                    title=f"fine-tuning on the DA-VAE latent ({'LoRA' if not args.full else 'full'}, N_warm={n_warm})")
        if not args.no_sample:
            summary["pipeline"] = str(finish(core, ema, args, out, resolution, merge_lora))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"fine-tuning done: outputs in {out.resolve()}" + (f"; pipeline: {summary['pipeline']}" if "pipeline" in summary else ""))
    accelerator.end_training()
    return summary


def finish(transformer, ema, args, out: Path, resolution: int, merge_lora) -> Path:
    """EMA weights into the transformer, LoRA merged, pipeline saved, sample grid drawn."""
    from diffusers import StableDiffusion3Pipeline

    from davae_ext.davae import DAVAE
    from davae_ext.pipeline import DAVAEStableDiffusion3Pipeline
    from davae_ext.synthetic import DEFAULT_PROMPTS
    from davae_ext.training import save_grid

    transformer.eval()
    ema.copy_to([(n, p) for n, p in transformer.named_parameters() if n in ema.shadow])
    if not args.full:
        merge_lora(transformer)
    base = StableDiffusion3Pipeline.from_pretrained(args.model, transformer=None, vae=None)
    davae = DAVAE.from_pretrained(args.davae).to(transformer.device).eval()
    pipe = DAVAEStableDiffusion3Pipeline.from_sd3_pipeline(base, transformer, davae)
    pipe.scheduler.register_to_config(shift=args.shift)
    pipe.save_pretrained(out / "pipeline")
    prompts = list(DEFAULT_PROMPTS)
    images = pipe(prompts, height=resolution, width=resolution, num_inference_steps=args.sample_steps,
                  guidance_scale=args.guidance, generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                  output_type="pt").images
    save_grid(out / "samples.png", [images * 2 - 1])
    return out / "pipeline"


if __name__ == "__main__":
    main()
