"""Memory per GPU of fine-tuning SD3.5-Medium and SD3.5-Large on a DA-VAE latent, from parameter
counts and measured activations: LoRA and full fine-tuning, DDP and FSDP, 1 / 8 / 64 GPUs, bf16
mixed precision, with and without gradient checkpointing; and the largest batch per H200.

    python bench/memory_model.py [--resolution 1024] [--output-dir docs]

What is counted, per GPU, as ``train/finetune_sd35.py`` holds it:

- **frozen weights** (LoRA) in bfloat16, ``--frozen-dtype auto`` under bf16 mixed precision (the
  extra of float32 is stated), the blocks' sharded over the GPUs under FSDP;
- **trained weights** in ``--trainable-dtype`` (bfloat16 under bf16 by default), their gradients
  in the same dtype, AdamW's two moments in the same dtype, the EMA in float32: 2 + 2 + 4 + 4 = 12
  bytes per trained parameter; sharded under FSDP except the replicated patch embedder, head and
  embedders;
- under FSDP, the **gathered units**: two blocks' weights at a time (the one computing and the one
  prefetched);
- **activations per image**, measured: one joint block (dual-attention and plain) run forward at
  full width under bf16 autocast on this CPU, the bytes of every tensor autograd saves
  (``saved_tensors_hooks``, each storage once), at two token counts, fitted linear in tokens
  (attention through SDPA saves no tokens x tokens matrix). With gradient checkpointing a block
  keeps only its inputs (the image and text streams in float32 and the conditioning), and one
  block's activations are live again during its recomputation and backward.

Not counted: the CUDA context and allocator slack (taken as 3 GiB, ``--overhead-gib``), the text
encoders and the VAE (the scripts cache latents and text embeddings first), temporary buffers of
the fused kernels (a few MB). The H200's 141 GB is 131.3 GiB; the largest batch keeps
``--headroom`` (10%) of it free.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2 ** 30
H200_GIB = 141e9 / GIB
TEXT_TOKENS = 77 + 256  # CLIP's 77 and T5's 256 (the SD3 pipelines' default max_sequence_length)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "norm1.linear")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=1024,
                   help="image size with DA-VAE: (size / 32)^2 image tokens (default: 1024)")
    p.add_argument("--lora-rank", type=int, default=256, help="LoRA rank on the released targets (default: 256)")
    p.add_argument("--detail-channels", type=int, default=16, help="D of the DA-VAE (default: 16 = C)")
    p.add_argument("--overhead-gib", type=float, default=3.0, help="CUDA context and allocator slack (default: 3)")
    p.add_argument("--headroom", type=float, default=0.10, help="share of the H200 kept free (default: 0.10)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: autocast, bf16 trained and frozen weights; fp32: everything float32, as the CPU runs "
                        "of docs/scale.md (default: bf16)")
    p.add_argument("--output-dir", default=None, help="also write memory_model.json and memory_model.md here")
    return p.parse_args(argv)


def counts(large: bool, rank: int, detail: int) -> dict:
    """Parameter counts of the widened transformer (on the meta device): frozen and LoRA,
    replicated (outside the blocks) and per block."""
    import torch
    from diffusers import SD3Transformer2DModel

    from davae_ext.training.full_size import transformer_config

    with torch.device("meta"):
        model = SD3Transformer2DModel(**transformer_config(large=large))
    hidden, patch, channels = model.inner_dim, model.config.patch_size, model.config.in_channels
    total = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer_blocks."))
    # the widening adds D input and D output channels per patch position to the embedder and head
    widened = patch * patch * detail * hidden + hidden * patch * patch * detail + patch * patch * detail
    lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in TARGETS):
            lora += rank * (module.in_features + module.out_features)
    embed_head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("pos_embed.", "proj_out.")))
    return {"total": total + widened, "blocks": blocks, "replicated": total + widened - blocks, "lora": lora,
            "embed_head": embed_head + widened, "layers": model.config.num_layers, "hidden": hidden,
            "dual_layers": len(model.config.dual_attention_layers or ())}


def block_activation_bytes(hidden: int, heads: int, dual: bool, image_tokens: int, text_tokens: int, mode: str,
                           autocast: bool = True) -> int:
    """Bytes autograd saves for one joint block's forward (bf16 autocast, batch 1), each storage
    once. ``mode`` 'lora': the LoRA targets' weights require gradients (their inputs are saved, as
    LoRA's A needs them; the rank-r intermediates are left out), 'full': every weight does."""
    import torch
    from diffusers.models.attention import JointTransformerBlock

    torch.manual_seed(0)
    block = JointTransformerBlock(hidden, heads, 64, context_pre_only=False, qk_norm="rms_norm", use_dual_attention=dual)
    block.requires_grad_(mode == "full")
    if mode == "lora":
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in TARGETS):
                module.weight.requires_grad_(True)
    x = torch.randn(1, image_tokens, hidden, requires_grad=True)
    c = torch.randn(1, text_tokens, hidden, requires_grad=True)
    temb = torch.randn(1, hidden, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, c, temb)
    return sum(seen.values())


def activations(hidden: int, heads: int, dual: bool, tokens: int, mode: str, autocast: bool) -> float:
    """Activation bytes of one block per image at ``tokens`` image tokens (+ the text tokens),
    from two measured sizes, linear in tokens."""
    small = block_activation_bytes(hidden, heads, dual, 64, TEXT_TOKENS // 4, mode, autocast)
    large = block_activation_bytes(hidden, heads, dual, 128, TEXT_TOKENS // 2, mode, autocast)
    per_token = (large - small) / ((128 + TEXT_TOKENS // 2) - (64 + TEXT_TOKENS // 4))
    return small + per_token * ((tokens + TEXT_TOKENS) - (64 + TEXT_TOKENS // 4))


def per_gpu(c: dict, act: dict, tokens: int, mode: str, parallel: str, gpus: int, checkpointing: bool,
            frozen_bytes: int, overhead_gib: float, weight_bytes: int = 2) -> dict:
    """GiB per GPU, by part, for batch 1 per GPU, and the activations of one more image.
    ``weight_bytes``: of a trained weight (its gradient and each AdamW moment alike)."""
    shard = gpus if parallel == "fsdp" else 1
    state = 4 * weight_bytes + 4  # weight, gradient, two moments, the float32 EMA
    if mode == "lora":  # frozen blocks sharded, frozen embedders replicated; LoRA sharded, embedder and head replicated
        weights = (c["blocks"] * frozen_bytes / shard + (c["replicated"] - c["embed_head"]) * frozen_bytes
                   + c["lora"] * state / shard + c["embed_head"] * state)
    else:
        weights = c["blocks"] * state / shard + c["replicated"] * state
    gathered = 0.0
    if parallel == "fsdp" and gpus > 1:
        per_block = c["blocks"] / c["layers"]
        gathered = 2 * per_block * (frozen_bytes if mode == "lora" else weight_bytes)
    layers, dual = c["layers"], c["dual_layers"]
    full = dual * act["dual"] + (layers - dual) * act["plain"]
    if checkpointing:
        inputs = layers * ((tokens + TEXT_TOKENS) * c["hidden"] * 4 + c["hidden"] * 4)
        one_image = inputs + 2 * max(act["dual"], act["plain"])
    else:
        one_image = full
    total = weights + gathered + one_image + overhead_gib * GIB
    return {"weights_gib": weights / GIB, "gathered_gib": gathered / GIB, "activations_gib": one_image / GIB,
            "total_gib": total / GIB, "per_image_gib": one_image / GIB}


def largest_batch(row: dict, headroom: float) -> int:
    free = H200_GIB * (1 - headroom) - (row["total_gib"] - row["per_image_gib"])
    return max(int(free // row["per_image_gib"]), 0)


def main(argv=None):
    args = parse(argv)
    tokens = (args.resolution // 32) ** 2  # DA-VAE: f8 latent of the half-resolution image (f16), patch 2
    bf16 = args.precision == "bf16"
    wb = 2 if bf16 else 4
    result = {"resolution": args.resolution, "image_tokens": tokens, "text_tokens": TEXT_TOKENS,
              "precision": args.precision, "models": {}}
    lines = [f"Per GPU at {args.resolution} px with DA-VAE ({tokens} image + {TEXT_TOKENS} text tokens), batch 1 per "
             f"GPU, {'bf16 autocast' if bf16 else 'float32'}, LoRA rank {args.lora_rank}; GiB. `ckpt`: gradient checkpointing. Largest batch: per "
             f"H200 ({H200_GIB:.1f} GiB, {args.headroom:.0%} kept free).", ""]
    for name, large in (("SD3.5-Medium", False), ("SD3.5-Large", True)):
        c = counts(large, args.lora_rank, args.detail_channels)
        heads = c["hidden"] // 64
        acts = {mode: {"dual": activations(c["hidden"], heads, True, tokens, mode, bf16) if c["dual_layers"] else 0.0,
                       "plain": activations(c["hidden"], heads, False, tokens, mode, bf16)} for mode in ("lora", "full")}
        act = acts["lora"]
        rows = []
        for mode in ("lora", "full"):
            for parallel, gpus in (("ddp", 1), ("fsdp", 8), ("fsdp", 64)):  # DDP holds the same on any number
                for ckpt in (True, False):
                    r = per_gpu(c, acts[mode], tokens, mode, parallel, gpus, ckpt, wb, args.overhead_gib, wb)
                    r |= {"mode": mode, "parallel": parallel, "gpus": gpus, "checkpointing": ckpt,
                          "largest_batch_h200": largest_batch(r, args.headroom)}
                    rows.append(r)
        frozen32 = per_gpu(c, acts["lora"], tokens, "lora", "ddp", 1, True, 4, args.overhead_gib, wb)
        extra = frozen32["weights_gib"] - rows[0]["weights_gib"]
        result["models"][name] = {"counts": c, "block_activation_gib": {m: {k: v / GIB for k, v in a.items()}
                                                                        for m, a in acts.items()}, "rows": rows}
        lines += [f"### {name}: {c['total'] / 1e9:.3f}B parameters (widened), LoRA {c['lora'] / 1e6:.1f}M; one block's "
                  f"activations per image {act['plain'] / GIB:.2f} GiB LoRA, {acts['full']['plain'] / GIB:.2f} GiB full"
                  + (f" ({act['dual'] / GIB:.2f} / {acts['full']['dual'] / GIB:.2f} GiB with dual attention)"
                     if c["dual_layers"] else "") + "." + (f" LoRA's frozen weights in float32 (`--frozen-dtype "
                                                         f"float32`) add {extra:.1f} GiB under DDP." if bf16 else ""), "",
                  "| training | parallel | GPUs | ckpt | weights + optimiser | gathered units | activations / image | "
                  "total (batch 1) | largest batch / H200 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            gpus = "any" if r["parallel"] == "ddp" else r["gpus"]
            lines.append(f"| {r['mode']} | {r['parallel']} | {gpus} | {'on' if r['checkpointing'] else 'off'} | "
                         f"{r['weights_gib']:.1f} | "
                         f"{r['gathered_gib']:.2f} | {r['per_image_gib']:.2f} | {r['total_gib']:.1f} | "
                         f"{r['largest_batch_h200']} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.output_dir:
        out = Path(args.output_dir)
        (out / "memory_model.json").write_text(json.dumps(result, indent=1))
        (out / "memory_model.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
