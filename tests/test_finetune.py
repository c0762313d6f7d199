"""The fine-tuning objective (Eqs. 12-13) and train/finetune_sd35.py on the quick tiny models."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import log_column, run_script
from davae_ext.training.flow import channel_mask, detail_weight, flow_loss, sample_sigmas

SCRIPT = str(Path(__file__).resolve().parents[1] / "train" / "finetune_sd35.py")
FAST = ["--quick-default", "--resolution", "64", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "4",
        "--crops-per-image", "1", "--no-progress", "--sample-steps", "2"]


def test_detail_weight_schedule():
    assert detail_weight(0, 1000) == 0.0
    assert detail_weight(500, 1000) == pytest.approx(0.5)
    assert detail_weight(250, 1000) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert detail_weight(1000, 1000) == 1.0 and detail_weight(2000, 1000) == 1.0
    assert detail_weight(5, 0) == 1.0


@pytest.mark.parametrize("order", ["base_first", "detail_first"])
def test_flow_loss_normalisation(order):
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(3, 48, 4, 4, generator=g) for _ in range(3))
    s = torch.rand(3, generator=g)
    err = (pred - (noise - x0)) ** 2
    base = slice(0, 16) if order == "base_first" else slice(32, 48)
    det = slice(16, 48) if order == "base_first" else slice(0, 32)
    torch.testing.assert_close(flow_loss(pred, x0, noise, s, 16, order, w=0.0)["loss"], err[:, base].mean())
    torch.testing.assert_close(flow_loss(pred, x0, noise, s, 16, order, w=1.0)["loss"], err.mean())
    w = 0.3
    expected = ((err[:, base].flatten(1).sum(1) + w * err[:, det].flatten(1).sum(1)) / ((16 + w * 32) * 16)).mean()
    torch.testing.assert_close(flow_loss(pred, x0, noise, s, 16, order, w=w)["loss"], expected)
    snr = torch.clamp((1 - s) / s, max=5.0).view(3, 1, 1, 1)
    x0_err = err * s.view(3, 1, 1, 1) ** 2 * snr
    torch.testing.assert_close(flow_loss(pred, x0, noise, s, 16, order, w=1.0, mode="x0_min_snr")["loss"], x0_err.mean())
    assert channel_mask(48, 16, order, 0.0)[0, base].eq(1).all()


def test_sigmas_follow_the_shifted_logit_normal():
    s = sample_sigmas(20000, shift=4.0, generator=torch.Generator().manual_seed(0))
    assert 0 < float(s.min()) and float(s.max()) < 1
    u = torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(s, 4 * u / (1 + 3 * u))


def run(args, check=True, nproc=1):
    return run_script(SCRIPT, args, check, nproc, port=29519)


losses = log_column


@pytest.fixture(scope="module")
def lora_run(quick_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "lora"
    p = run([*FAST, "--steps", "4", "--checkpoint-every", "2", "--fused", "--output-dir", str(out)])
    return out, p


def test_lora_run_outputs_and_step0_identity(lora_run):
    out, _ = lora_run
    for name in ("log.csv", "loss_curves.png", "samples.png", "summary.json", "pipeline/model_index.json"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    step0 = s["step0"]
    assert step0["max_abs_diff_base_prediction"] < 1e-5  # the expanded model is the pretrained one
    assert step0["max_abs_detail_prediction"] == 0.0  # zero-init detail output
    assert step0["base_loss_expanded"] == pytest.approx(step0["base_loss_original"], rel=1e-5)
    assert len(losses(out)) == 4
    assert 0.2 < s["peak_rss_gib"] < 20  # this process's peak resident memory, from getrusage


def test_resume_passes_over_a_truncated_checkpoint(lora_run, tmp_path):
    out = tmp_path / "run"
    args = [*FAST, "--checkpoint-every", "1", "--no-sample", "--output-dir", str(out)]
    run([*args, "--steps", "3"])
    newest = out / "checkpoints" / "step_0000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    p = run([*args, "--steps", "4", "--resume"])
    assert "step_0000003.pt is unreadable" in p.stderr and "at step 2" in p.stdout + p.stderr
    assert [int(float(v)) for v in [r for r in losses(out, "step")]] == [0, 1, 2, 3]


def test_cache_reused_and_resume_matches(lora_run, tmp_path):
    out, first = lora_run
    assert "cache built" in first.stdout + first.stderr
    straight = tmp_path / "straight"
    p = run([*FAST, "--steps", "4", "--no-sample", "--output-dir", str(straight)])
    assert "cache reused" in p.stdout + p.stderr
    resumed = tmp_path / "resumed"
    run([*FAST, "--steps", "4", "--stop-at", "2", "--no-sample", "--output-dir", str(resumed)])
    run([*FAST, "--steps", "4", "--no-sample", "--resume", "--output-dir", str(resumed)])
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, resumed))
    assert a["fingerprint"] == b["fingerprint"]
    assert losses(straight) == losses(resumed)


def test_fused_and_reference_give_the_same_curve(lora_run, tmp_path):
    out, _ = lora_run  # --fused
    ref = tmp_path / "reference"
    run([*FAST, "--steps", "4", "--no-sample", "--output-dir", str(ref)])
    for col in ("loss", "base_mse", "detail_mse"):
        assert losses(ref, col) == pytest.approx(losses(out, col), rel=1e-4, abs=1e-6)


def test_full_finetuning_and_losses(quick_pipeline, tmp_path):
    out = tmp_path / "full"
    run([*FAST, "--full", "--steps", "3", "--no-sample", "--output-dir", str(out)])
    s = json.loads((out / "summary.json").read_text())
    assert s["trainable_parameters"] > 10 * 29632  # every transformer weight, not LoRA


def test_two_cpu_processes_hold_identical_weights(quick_pipeline, tmp_path):
    out = tmp_path / "ddp"
    run([*FAST, "--steps", "3", "--no-sample", "--output-dir", str(out)], nproc=2)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text())["fingerprint"] for r in (0, 1)]
    assert ranks[0] == ranks[1]


def test_bad_model_folder(quick_pipeline, tmp_path):
    (tmp_path / "notsd3").mkdir()
    (tmp_path / "notsd3" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    p = run([*FAST, "--model", str(tmp_path / "notsd3"), "--output-dir", str(tmp_path / "o")], check=False)
    assert p.returncode == 2 and "expected a StableDiffusion3Pipeline with an SD3Transformer2DModel" in p.stderr
    assert not (tmp_path / "o" / "log.csv").exists()


def test_davae_with_other_base_channels(quick_pipeline, tmp_path):
    from diffusers import AutoencoderKL

    from davae_ext.models.davae import DAVAE

    vae = AutoencoderKL(latent_channels=4, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    d = DAVAE.from_base_vae(vae)
    d.set_latent_stats([0.0] * 4, [1.0] * 4)
    d.save_pretrained(tmp_path / "davae4")
    p = run([*FAST, "--model", str(quick_pipeline), "--davae", str(tmp_path / "davae4"), "--output-dir", str(tmp_path / "o")],
            check=False)
    assert p.returncode == 2 and "a DA-VAE with 16 base channels" in p.stderr and "it has 4" in p.stderr


def test_synthetic_data_is_resumable_and_trains(quick_pipeline, tmp_path):
    script = Path(SCRIPT).with_name("make_synthetic_data.py")
    base = [sys.executable, str(script), "--model", str(quick_pipeline), "--resolution", "32", "--steps", "1",
            "--output-dir", str(tmp_path / "syn"), "--no-progress"]
    subprocess.run([*base, "--count", "2"], check=True, capture_output=True, timeout=300)
    first = (tmp_path / "syn" / "000000.png").stat().st_mtime_ns
    subprocess.run([*base, "--count", "3"], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in (tmp_path / "syn").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    assert (tmp_path / "syn" / "000000.png").stat().st_mtime_ns == first  # kept, not regenerated
    assert len((tmp_path / "syn" / "metadata.jsonl").read_text().splitlines()) == 3
    out = tmp_path / "ft"
    run([*FAST, "--synthetic", "2", "--steps", "1", "--no-sample", "--output-dir", str(out)])
    assert len(list((out / "synthetic").glob("*.png"))) == 2


def test_fused_bf16_mixed_precision(quick_pipeline, tmp_path):
    """--fused under bf16 autocast: the widened patch embed runs in bf16 like the Conv2d it
    replaces (csrc/autocast.cpp); the step-0 check and the losses stay finite and close to the
    unfused run's. The frozen weights are bfloat16 there (``--frozen-dtype auto``): autocast
    computes with them in bf16 anyway, so the losses stay those of float32 frozen weights."""
    fused, plain, frozen32 = tmp_path / "fused", tmp_path / "plain", tmp_path / "frozen32"
    run([*FAST, "--steps", "2", "--no-sample", "--mixed-precision", "bf16", "--fused", "--output-dir", str(fused)])
    run([*FAST, "--steps", "2", "--no-sample", "--mixed-precision", "bf16", "--output-dir", str(plain)])
    run([*FAST, "--steps", "2", "--no-sample", "--mixed-precision", "bf16", "--frozen-dtype", "float32",
         "--output-dir", str(frozen32)])
    a, b = losses(fused), losses(plain)
    assert all(math.isfinite(x) for x in a) and a == pytest.approx(b, rel=0.05)
    assert losses(frozen32) == pytest.approx(b, rel=0.01)


def test_a_nan_batch_is_skipped_and_resume_after_it_is_exact(quick_pipeline, tmp_path):
    """Step 1's batch is NaN: the step is skipped (logged, counted) and leaves the weights, the
    optimizer state and the EMA as they were; training continues; a run stopped right after the
    skipped step and resumed ends where an uninterrupted one does."""
    straight = tmp_path / "straight"
    args = [*FAST, "--steps", "4", "--nan-at-step", "1", "--checkpoint-every", "1", "--keep-checkpoints", "4",
            "--no-sample"]
    run([*args, "--output-dir", str(straight)])
    assert losses(straight, "skipped") == [0, 1, 0, 0]
    loss = losses(straight)
    assert math.isnan(loss[1]) and all(math.isfinite(v) for v in loss[:1] + loss[2:])
    s = json.loads((straight / "summary.json").read_text())
    assert s["skipped_steps"] == 1 and s["recipe"] == "paper"
    before, after = (torch.load(straight / "checkpoints" / f"step_{n:07d}.pt", map_location="cpu") for n in (1, 2))
    for b, a in ((before["model"], after["model"]), (before["ema"]["shadow"], after["ema"]["shadow"])):
        assert b.keys() == a.keys()
        for k in b:
            assert torch.equal(b[k], a[k]), k
    assert before["optimizer"]["state"].keys() == after["optimizer"]["state"].keys()
    for i, st in before["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, after["optimizer"]["state"][i][k]), (i, k)
    final = torch.load(straight / "checkpoints" / "step_0000004.pt", map_location="cpu")
    assert any(not torch.equal(before["model"][k], final["model"][k]) for k in before["model"])  # it went on

    resumed = tmp_path / "resumed"
    run([*args, "--stop-at", "2", "--output-dir", str(resumed)])
    run([*args, "--resume", "--output-dir", str(resumed)])
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, resumed))
    assert a["fingerprint"] == b["fingerprint"]
    assert losses(resumed, "skipped") == [0, 1, 0, 0]


def test_released_recipe_under_bf16_trains_bf16_weights_and_samples(quick_pipeline, tmp_path):
    """--recipe released with --mixed-precision bf16: the trained weights are bfloat16 (x0 +
    min-SNR loss, truncated timesteps, clip 0.5, skip above 10); the run finishes, and the saved
    pipeline (float32, EMA weights) records the released sampling defaults."""
    out = tmp_path / "released"
    run([*FAST, "--recipe", "released", "--mixed-precision", "bf16", "--steps", "2", "--checkpoint-every", "2",
         "--output-dir", str(out)])
    state = torch.load(out / "checkpoints" / "step_0000002.pt", map_location="cpu")
    assert {t.dtype for t in state["model"].values()} == {torch.bfloat16}
    assert {t.dtype for t in state["ema"]["shadow"].values()} == {torch.float32}
    assert all(math.isfinite(v) for v in losses(out))
    defaults = json.loads((out / "pipeline" / "sampling_defaults.json").read_text())
    assert defaults["recipe"] == "released" and "low quality" in defaults["negative_prompt"]
    assert defaults["steps"] == 30 and defaults["shift"] == 4.0
