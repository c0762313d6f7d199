"""LoRA on the expanded SD3 transformer through ``peft`` (the released recipe: rank and alpha 256,
Gaussian init, on ``to_q, to_k, to_v, to_out.0, ff.net.2, norm1.linear``), and merging it back
into plain weights for saving."""

from __future__ import annotations

from typing import Sequence

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "norm1.linear")
# Trained in full alongside the LoRA: the widened patch embedder and output head.
FULL_MODULES = ("pos_embed.", "proj_out.")


def add_lora(transformer, rank: int = 256, alpha: float = 256, targets: Sequence[str] = DEFAULT_TARGETS) -> None:
    """Freeze ``transformer`` except the patch embedder and output head, and add LoRA adapters
    (B = 0 at init, so the model is unchanged)."""
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"add_lora: 'rank' must be positive, got {rank}")
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                       target_modules=list(targets)))
    for name, p in transformer.named_parameters():
        if name.startswith(FULL_MODULES):
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


__all__ = ["DEFAULT_TARGETS", "FULL_MODULES", "add_lora", "merge_lora", "lora_parameter_count"]
