"""LoRA on an expanded transformer through ``peft`` (SD3, the released recipe: rank and alpha 256,
Gaussian init, on ``to_q, to_k, to_v, to_out.0, ff.net.2, norm1.linear``; FLUX:
:data:`FLUX_TARGETS`), and merging it back into plain weights for
saving."""

from __future__ import annotations

from typing import Sequence

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "norm1.linear")
# FLUX (peft suffix names): the attention projections of both streams of the double blocks, their
# MLPs, the image stream's modulation (as SD3's recipe), the single blocks' modulation, MLP input
# and fused output. "proj_out" also names the model's own head, the widened layer trained in full:
# add_lora leaves the full modules without an adapter.
FLUX_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj",
    "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm.linear", "proj_mlp", "proj_out",
)
# Trained in full alongside the LoRA: the widened patch embedder and output head.
FULL_MODULES = ("pos_embed.", "proj_out.")
FLUX_FULL_MODULES = ("x_embedder.", "proj_out.")


def add_lora(transformer, rank: int = 256, alpha: float = 256, targets: Sequence[str] = DEFAULT_TARGETS,
             full_modules: Sequence[str] = FULL_MODULES) -> None:
    """Freeze ``transformer`` except ``full_modules`` (the widened patch embedder and output head,
    which get no adapter even where a target name matches them), and add LoRA adapters (B = 0 at
    init, so the model is unchanged)."""
    import re

    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"add_lora: 'rank' must be positive, got {rank}")
    transformer.requires_grad_(False)
    full = tuple(full_modules)
    # A string is matched in full against module names: the top-level modules only (FLUX's own
    # ``proj_out`` and not ``single_transformer_blocks.*.proj_out``).
    exclude = "|".join(re.escape(m.rstrip(".")) for m in full)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                       target_modules=list(targets), exclude_modules=exclude))
    for name, p in transformer.named_parameters():
        if name.startswith(full):
            p.requires_grad_(True)


def merge_lora(transformer) -> None:
    """Fold every LoRA adapter into its base layer and remove the adapters (in place): the model's
    state dict then has the stock keys."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(transformer.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = transformer.get_submodule(parent_name) if parent_name else transformer
            setattr(parent, child, module.get_base_layer())
    for attr in ("peft_config",):
        if hasattr(transformer, attr):
            delattr(transformer, attr)
    transformer._hf_peft_config_loaded = False


def lora_parameter_count(transformer) -> int:
    return sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)


__all__ = ["DEFAULT_TARGETS", "FLUX_TARGETS", "FULL_MODULES", "FLUX_FULL_MODULES", "add_lora", "merge_lora", "lora_parameter_count"]
