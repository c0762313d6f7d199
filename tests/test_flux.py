"""DA-VAE for FLUX-class transformers: packing, the widened x_embedder / proj_out in FLUX's packed
channel order, the zero-init warm start, save / load, the pipeline's base-channel invariant and
train/finetune_flux.py on the quick tiny models."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE_DTYPES, ORDERS, check_against_reference, device_dtype_id, log_column, make, run_script

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel  # noqa: E402

from davae_ext import ops  # noqa: E402
from davae_ext.channels import join_channels, split_channels  # noqa: E402
from davae_ext.models.flux import DAVAEFluxTransformer2DModel, expand_flux_transformer, flux_predict  # noqa: E402
from davae_ext.nn import DetailPackedEmbed, DetailProjOut, pack_latents, unpack_latents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train" / "finetune_flux.py")
FAST = ["--quick-default", "--resolution", "64", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "4",
        "--crops-per-image", "1", "--no-progress", "--sample-steps", "2", "--sample-prompts", "2"]


def tiny_flux(in_channels=16, guidance=True, seed=0):
    torch.manual_seed(seed)
    return FluxTransformer2DModel(in_channels=in_channels, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
                                  guidance_embeds=guidance, axes_dims_rope=(2, 2, 4)).eval()


def conditioning(B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 5, 12, generator=g), torch.randn(B, 6, generator=g), torch.rand(B, generator=g),
            torch.full((B,), 3.5))


# ----------------------------------------------------------------------------------------------
# Packing and the widened layers
# ----------------------------------------------------------------------------------------------
def test_pack_and_unpack_are_fluxs():
    z = torch.randn(3, 5, 6, 10)
    packed = pack_latents(z)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(z, 3, 5, 6, 10), rtol=0, atol=0)
    assert torch.equal(unpack_latents(packed, 6, 10), z)
    # FluxPipeline._unpack_latents takes the image size and its VAE factor (8 here)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 80, 8), z)
    with pytest.raises(ValueError, match=r"H and W multiples of 2, got \[3, 5, 5, 10\]"):
        pack_latents(torch.randn(3, 5, 5, 10))
    with pytest.raises(ValueError, match=r"must have shape \[B, 18, C \* 4\] for a 6 x 12 latent, got \[3, 15, 20\]"):
        unpack_latents(packed, 6, 12)


@pytest.mark.parametrize("order", ORDERS)
def test_packed_embed_columns_by_hand(order):
    """Feature (c, py, px) of a packed token is column c * 4 + 2 py + px of the widened x_embedder,
    c counting the C + D channels in ``order``: a one-hot column reads exactly that latent pixel."""
    C, D, N = 2, 4, 3
    emb = DetailPackedEmbed(C, D, N, bias=False, order=order, fused=False)
    z = torch.randn(1, C + D, 4, 6)
    for channel, py, px in ((0, 0, 0), (C + 1, 1, 0), (C + D - 1, 1, 1)):
        with torch.no_grad():
            emb.weight.zero_()
            emb.weight[1, channel * 4 + 2 * py + px] = 1.0
        for fused in (False, True):
            emb.fused = fused
            for x in (z, pack_latents(z)):
                out = emb(x)  # [1, 2 * 3 tokens, N]
                expected = z[0, channel, py::2, px::2].flatten()
                assert torch.equal(out[0, :, 1], expected), (channel, py, px, fused, x.dim())
                assert out[0, :, [0, 2]].abs().max() == 0


@pytest.mark.parametrize("order", ORDERS)
def test_packed_embed_from_linear_keeps_the_pretrained_columns(order):
    torch.manual_seed(0)
    C, D = 4, 8
    linear = torch.nn.Linear(4 * C, 16)
    emb = DetailPackedEmbed.from_linear(linear, D, init="zero", order=order)
    w_base, w_detail = split_channels(emb.weight.unflatten(1, (C + D, 4)), C, order)
    assert torch.equal(w_base.flatten(1), linear.weight) and w_detail.abs().max() == 0
    assert torch.equal(emb.bias, linear.bias)
    z = torch.randn(2, C + D, 6, 4)
    base, _ = split_channels(z, C, order)
    emb.fused = False  # exact: the pretrained Linear's arithmetic on the base features
    assert torch.equal(emb(z), linear(pack_latents(base)))
    emb.fused = True
    torch.testing.assert_close(emb(z), linear(pack_latents(base)), rtol=1e-6, atol=1e-6)
    ra = DetailPackedEmbed.from_linear(linear, D, init="repeat_average", order=order)
    # detail channel d copies base channel d // 2, divided by 2: a detail latent of two copies of
    # each base channel adds as much as the base does
    z_rep = join_channels(base, base.repeat_interleave(2, dim=1), order)
    torch.testing.assert_close(ra(z_rep) - ra.bias, 2 * (linear(pack_latents(base)) - linear.bias), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"packed tokens \[B, T, 48\] or a latent \[B, 12, H, W\].*got \[2, 11, 6, 4\]"):
        emb(torch.randn(2, 11, 6, 4))


@pytest.mark.parametrize("order", ORDERS)
def test_channel_major_proj_out_by_hand(order):
    """Output feature (c, py, px) is row c * 4 + 2 py + px (FLUX's unpack): the pretrained rows
    go to the base channels, the detail rows start at zero, and both forward paths agree."""
    torch.manual_seed(0)
    C, D, hidden = 3, 6, 10
    linear = torch.nn.Linear(hidden, 4 * C)
    head = DetailProjOut.from_linear(linear, C, D, 2, init="zero", order=order, layout="channel_major")
    rows_base, rows_detail = split_channels(head.weight.unflatten(0, (C + D, 4)), C, order, dim=0)
    assert torch.equal(rows_base.flatten(0, 1), linear.weight) and rows_detail.abs().max() == 0
    x = torch.randn(2, 7, hidden)
    for fused in (False, True):
        head.fused = fused
        base, detail = split_channels(head(x).unflatten(-1, (C + D, 4)), C, order, dim=-2)
        if fused:
            torch.testing.assert_close(base.flatten(-2), linear(x), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(base.flatten(-2), linear(x))
        assert detail.abs().max() == 0
    with torch.no_grad():
        head.weight.normal_()
        head.bias.normal_()
    x.requires_grad_(True)
    outs = []
    for fused in (False, True):
        head.fused = fused
        y = head(x)
        outs.append((y, *torch.autograd.grad(y.square().sum(), [x, head.weight, head.bias])))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", [(1, 32, 4, 4), (3, 20, 6, 10)])
def test_fused_packed_embed_matches_pack_and_linear(device_dtype, shape):
    """The fused path on an unpacked latent (patch-embed kernel, no table) against its reference
    twin, packing + Linear: outputs and the gradients of latent, weight and bias."""
    device, dtype = device_dtype
    B, K, H, W = shape
    z = make(shape, dtype, device, seed=0, requires_grad=True)
    w = make((24, 4 * K), dtype, device, seed=1, requires_grad=True)
    b = make((24,), dtype, device, seed=2, requires_grad=True)
    check_against_reference(lambda z, w, b: ops.patch_embed(z, w.unflatten(1, (K, 2, 2)), b, None, 2),
                            lambda z, w, b: F.linear(pack_latents(z), w, b), [z, w, b], dtype)


# ----------------------------------------------------------------------------------------------
# The widened transformer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fused", [False, True])
def test_zero_init_is_the_pretrained_model_at_step0(order, fused):
    original = tiny_flux()
    widened = expand_flux_transformer(original, 8, order=order, fused=fused)
    assert isinstance(widened, DAVAEFluxTransformer2DModel) and widened.config.in_channels == 4 * (4 + 8)
    assert widened.base_channels == 4 and widened.config.detail_channels == 8
    z = torch.randn(2, 12, 8, 6)
    base, _ = split_channels(z, 4, order)
    emb, pooled, t, g = conditioning()
    with torch.no_grad():
        ref = flux_predict(original, base, emb, pooled, t, g)
        out = flux_predict(widened, z, emb, pooled, t, g)
    out_base, out_detail = split_channels(out, 4, order)
    if fused:
        torch.testing.assert_close(out_base, ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(out_base, ref)  # the plain path is the pretrained arithmetic bit for bit
    assert out_detail.abs().max() == 0


def test_guidance_is_required_for_a_guidance_distilled_model():
    emb, pooled, t, _ = conditioning()
    with pytest.raises(ValueError, match="guidance-distilled"):
        flux_predict(tiny_flux(), torch.randn(2, 4, 4, 4), emb, pooled, t)
    flux_predict(tiny_flux(guidance=False), torch.randn(2, 4, 4, 4), emb, pooled, t)  # schnell-like: none needed


def test_widening_checks_its_arguments():
    with pytest.raises(TypeError, match="must be a FluxTransformer2DModel"):
        expand_flux_transformer(torch.nn.Linear(2, 2), 8)
    widened = expand_flux_transformer(tiny_flux(), 8)
    with pytest.raises(ValueError, match="already a DAVAEFluxTransformer2DModel"):
        expand_flux_transformer(widened, 8)
    with pytest.raises(ValueError, match="'detail_channels' must be a positive int"):
        expand_flux_transformer(tiny_flux(), 0)
    with pytest.raises(ValueError, match="must exceed 4 x detail_channels"):
        DAVAEFluxTransformer2DModel(in_channels=32, detail_channels=8, num_layers=1, num_single_layers=1,
                                    attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))


def test_save_and_load(tmp_path):
    widened = expand_flux_transformer(tiny_flux(), 8, order="detail_first")
    with torch.no_grad():
        widened.x_embedder.weight.normal_()
        widened.proj_out.weight.normal_()
    widened.save_pretrained(tmp_path / "t")
    loaded = DAVAEFluxTransformer2DModel.from_pretrained(tmp_path / "t").eval()
    assert loaded.config.channel_order == "detail_first" and loaded.config.in_channels == 48
    assert isinstance(loaded.x_embedder, DetailPackedEmbed) and loaded.proj_out.layout == "channel_major"
    z = torch.randn(1, 12, 4, 4)
    emb, pooled, t, g = conditioning(1)
    with torch.no_grad():
        # equal weights (the state dicts are compared below); the two models' forwards differ by
        # summation-order noise (1.4e-6 measured), so not bit for bit
        torch.testing.assert_close(flux_predict(loaded, z, emb, pooled, t, g), flux_predict(widened, z, emb, pooled, t, g),
                                   rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in widened.state_dict().items())
    keys = set(widened.state_dict())
    assert keys == set(tiny_flux().state_dict())  # FLUX's own keys: LoRA and checkpoint tools work as for FLUX


def test_fused_and_plain_outputs_and_gradients_agree():
    """The split layers (plain), the one-GEMM layers on packed tokens (fused) and the fused
    x_embedder on the unpacked latent (the patch-embed kernel): outputs and gradients of the
    latent, the widened layers and a block's weight."""
    widened = expand_flux_transformer(tiny_flux(), 8, init="random")
    emb, pooled, t, g = conditioning()
    results = []
    for fused, unpacked in ((False, False), (True, False), (True, True)):
        widened.set_fused(fused)
        widened.zero_grad()
        z = torch.randn(2, 12, 4, 6, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        out = flux_predict(widened, z, emb, pooled, t, g, unpacked=unpacked)
        out.square().mean().backward()
        results.append([out.detach(), z.grad, widened.x_embedder.weight.grad.clone(),
                        widened.x_embedder.bias.grad.clone(), widened.proj_out.weight.grad.clone(),
                        widened.transformer_blocks[0].attn.to_q.weight.grad.clone()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    widened.set_fused(False)
    with pytest.raises(ValueError, match="unpacked=True needs a widened transformer with a fused x_embedder"):
        flux_predict(widened, z, emb, pooled, t, g, unpacked=True)


def test_lora_targets_both_kinds_of_block_and_not_the_widened_layers():
    from davae_ext.training.lora import FLUX_FULL_MODULES, FLUX_TARGETS, add_lora, merge_lora

    widened = expand_flux_transformer(tiny_flux(), 8)
    stock_keys = set(widened.state_dict())
    add_lora(widened, 2, 2, FLUX_TARGETS, FLUX_FULL_MODULES)
    names = [n for n, _ in widened.named_parameters() if "lora_A" in n]
    assert any(n.startswith("transformer_blocks.0.attn.add_q_proj") for n in names)
    assert any(n.startswith("single_transformer_blocks.0.proj_out") for n in names)
    assert not any(n.startswith(("proj_out.", "x_embedder.")) for n in names)
    trainable = {n for n, p in widened.named_parameters() if p.requires_grad}
    assert {"x_embedder.weight", "proj_out.weight"} <= trainable
    assert all("lora_" in n or n.startswith(FLUX_FULL_MODULES) for n in trainable)
    merge_lora(widened)
    assert set(widened.state_dict()) == stock_keys


def test_the_training_shift_is_the_pipelines_dynamic_shift():
    """The trainer's default shift s = exp(mu) maps sigma as FLUX's scheduler does at that token
    count (its exponential time shift), so training and sampling noise levels agree."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from davae_ext.training.finetune_flux import dynamic_shift

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for tokens in (64, 1024, 4096):
        s = dynamic_shift(dict(sched.config), tokens)
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        torch.testing.assert_close(s * t / (1 + (s - 1) * t), sched.time_shift(mu, 1.0, t), rtol=1e-12, atol=1e-12)
    assert dynamic_shift({}, 1024) == pytest.approx(1.8776, abs=1e-4)


def test_davae_on_a_flux_shaped_vae():
    """FLUX's VAE: 16 channels, f8, shift 0.1159, scale 0.3611, no quant convs. The DA-VAE's base
    latent is the VAE's posterior mean of the half-resolution image, FLUX-normalised."""
    from davae_ext.models.davae import DAVAE

    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, layers_per_block=1,
                        shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                        use_post_quant_conv=False).eval()
    davae = DAVAE.from_base_vae(vae).eval()
    assert davae.spatial_factor == 16 and davae.base_channels == 16 and davae.detail_channels == 16
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent = davae.encode(image).latent_dist.mode()
        half = F.interpolate(image, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
        expected = (vae.encode(half).latent_dist.mean - 0.1159) * 0.3611
    assert latent.shape == (1, 32, 4, 4)
    torch.testing.assert_close(davae.split_latents(latent)[0], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The pipeline and the scripts (the quick tiny FLUX pipeline)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_flux(tiny_cache):
    pytest.importorskip("transformers")
    from davae_ext.training.tiny_flux import build_tiny_flux

    return build_tiny_flux(quick=True, progress=False)


@pytest.mark.parametrize("fused,true_cfg", [(False, False), (True, False), (False, True)],
                         ids=["plain", "fused", "plain-true-cfg"])
def test_base_channels_follow_the_stock_flux_pipeline_step_for_step(quick_flux, fused, true_cfg):
    """A fresh zero-init expansion in DAVAEFluxPipeline at 2x the resolution (same tokens): the
    base part of its packed latents equals the stock pipeline's latents after every step, with
    the guidance embedding alone and with true CFG (a negative prompt and true_cfg_scale)."""
    from davae_ext.models.davae import DAVAE
    from davae_ext.models.flux_pipeline import DAVAEFluxPipeline

    stock = FluxPipeline.from_pretrained(quick_flux)
    stock.set_progress_bar_config(disable=True)
    davae = DAVAE.from_base_vae(stock.vae)
    davae.set_latent_stats([0.0] * 16, [1.0] * 16)
    # Shared weights: clones of weights loaded from disk can sit at another alignment, and CPU GEMMs
    # then sum in another order (1e-6 apart): bit-exactness is a claim about the same tensors.
    widened = expand_flux_transformer(stock.transformer, 16, fused=fused, share_weights=True)
    pipe = DAVAEFluxPipeline.from_flux_pipeline(stock, widened, davae)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    base, detail = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)

    def recorder(store):
        def callback(p, i, t, kw):
            store.append(kw["latents"].clone())
            return {}
        return callback

    runs = {"stock": [], "davae": []}
    common = dict(prompt="a photo", num_inference_steps=3, guidance_scale=3.5, max_sequence_length=16,
                  output_type="latent")
    cfg = dict(negative_prompt="a blurry photo", true_cfg_scale=2.0) if true_cfg else {}
    stock(latents=pack_latents(base), height=64, width=64, callback_on_step_end=recorder(runs["stock"]),
          **common, **cfg)
    out = pipe(latents=pack_latents(torch.cat([base, detail], 1)), height=128, width=128,
               callback_on_step_end=recorder(runs["davae"]), **common, **cfg).images
    assert out.shape == (1, 16, 4 * 32) and len(runs["davae"]) == 3
    for s, d in zip(runs["stock"], runs["davae"]):
        base_part = split_channels(pipe.unpack(d, 128, 128), 16)[0]
        if fused:
            torch.testing.assert_close(pack_latents(base_part), s, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(pack_latents(base_part), s)
    if true_cfg:  # the negative branch ran: without it the trajectory differs
        assert not torch.allclose(stock(latents=pack_latents(base), height=64, width=64, **common).images,
                                  runs["stock"][-1])
    image = pipe("a photo", height=128, width=128, num_inference_steps=2, max_sequence_length=16,
                 output_type="pt").images
    assert image.shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="multiples of 32"):
        pipe("a photo", height=112, width=128, num_inference_steps=1)


def run(args, check=True, nproc=1, script=SCRIPT):
    return run_script(script, args, check, nproc, port=29537)


column = log_column


@pytest.fixture(scope="module")
def flux_run(quick_flux, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux") / "lora"
    run([*FAST, "--steps", "4", "--checkpoint-every", "2", "--fused", "--gradient-checkpointing", "--output-dir", str(out)])
    return out


def test_finetune_flux_outputs_step0_and_sampling(flux_run, tmp_path):
    for name in ("log.csv", "loss_curves.png", "samples.png", "summary.json", "pipeline/model_index.json"):
        assert (flux_run / name).exists(), name
    s = json.loads((flux_run / "summary.json").read_text())
    assert s["step0"]["max_abs_diff_base_prediction"] < 1e-5 and s["step0"]["max_abs_detail_prediction"] == 0.0
    index = json.loads((flux_run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "DAVAEFluxPipeline" and index["transformer"][1] == "DAVAEFluxTransformer2DModel"
    defaults = json.loads((flux_run / "pipeline" / "sampling_defaults.json").read_text())
    assert defaults["max_sequence_length"] == 64 and defaults["guidance"] == 3.5
    out = tmp_path / "samples"
    run(["--pipeline", str(flux_run / "pipeline"), "--prompt", "a cat", "--resolution", "64", "--steps", "2",
         "--output-dir", str(out), "--no-progress", "--compare-native"], script=str(ROOT / "train" / "sample.py"))
    record = json.loads((out / "samples.json").read_text())
    assert record["tokens_per_image"] == 4 and record["native"]["tokens_per_image"] == 16  # 2 x 2 vs 4 x 4 tokens
    assert (out / "compare.png").exists()


def test_finetune_flux_resume_is_exact_and_fused_equals_plain(flux_run, tmp_path):
    straight, resumed, plain = tmp_path / "straight", tmp_path / "resumed", tmp_path / "plain"
    args = [*FAST, "--steps", "4", "--no-sample"]
    run([*args, "--fused", "--output-dir", str(straight)])
    run([*args, "--fused", "--stop-at", "2", "--output-dir", str(resumed)])
    run([*args, "--fused", "--resume", "--output-dir", str(resumed)])
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, resumed))
    assert a["fingerprint"] == b["fingerprint"] and column(straight) == column(resumed)
    # the first run's curve: it recomputed the blocks' activations in backward (and wrote the pipeline)
    assert column(straight) == column(flux_run)
    run([*args, "--output-dir", str(plain)])
    for name in ("loss", "base_mse", "detail_mse"):
        assert column(plain, name) == pytest.approx(column(straight, name), rel=1e-4, abs=1e-6)


def test_finetune_flux_losses_fall(quick_flux, tmp_path):
    out = tmp_path / "long"
    run([*FAST, "--steps", "24", "--lr", "1e-3", "--batch-size", "8", "--no-sample", "--output-dir", str(out)])
    detail = column(out, "detail_mse")  # 2.24 -> 1.96 measured (first and last 6 steps)
    assert sum(detail[-6:]) / 6 < 0.95 * sum(detail[:6]) / 6, detail


def test_finetune_flux_two_cpu_processes_hold_identical_weights(quick_flux, tmp_path):
    out = tmp_path / "ddp"
    run([*FAST, "--steps", "2", "--no-sample", "--output-dir", str(out)], nproc=2)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text())["fingerprint"] for r in (0, 1)]
    assert ranks[0] == ranks[1]


def test_finetune_flux_rejects_an_sd3_model(tmp_path, quick_pipeline):
    p = run([*FAST, "--model", str(quick_pipeline), "--output-dir", str(tmp_path / "o")], check=False)
    assert p.returncode == 2 and "expected a FluxPipeline with a FluxTransformer2DModel" in p.stderr
