"""FSDP through ``accelerate launch`` with the shipped configs (train/configs/), two CPU processes
over gloo, on the quick tiny models: checkpoints, exact resume, agreement with DDP, and an FSDP
checkpoint resumed and sampled by a single process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from davae_ext.training.common import csv_column

pytest.importorskip("accelerate")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"
FAST = ["--quick-default", "--resolution", "64", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "4",
        "--crops-per-image", "1", "--no-progress", "--sample-steps", "2", "--sample-prompts", "1"]
VAE_FAST = ["--resolution", "32", "--batch-size", "2", "--no-progress", "--no-eval", "--steps", "3"]


def launch(config, script, args, env):
    """``accelerate launch --config_file train/configs/<config>.yaml`` (one process when None)."""
    prefix = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
              "--main_process_port", "29533"] if config else [sys.executable]
    p = subprocess.run(prefix + [str(ROOT / "train" / script), *args], capture_output=True, text=True,
                       env=dict(env, OMP_NUM_THREADS="1"), timeout=900, cwd=ROOT)
    if p.returncode != 0:
        raise AssertionError(f"{script} under {config} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-4000:]}")
    return p


def checkpoint(folder, step):
    return torch.load(folder / "checkpoints" / f"step_{step:07d}.pt", map_location="cpu", weights_only=False)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def optimizer_tensors(state: dict) -> dict:
    return {f"{i}.{k}": v for i, s in state["optimizer"]["state"].items() for k, v in s.items() if v.dim() > 0}


@pytest.fixture(scope="module")
def env(quick_pipeline, tmp_path_factory):
    """A cache holding only the tiny pipeline: the first two-process run trains its default DA-VAE
    inside its main process while the other waits (no collectives, the process group kept)."""
    cache = tmp_path_factory.mktemp("fsdp_cache")
    shutil.copytree(quick_pipeline, cache / Path(quick_pipeline).name)
    return dict(os.environ, DAVAE_CACHE=str(cache))


@pytest.fixture(scope="module")
def fsdp_runs(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    args = [*FAST, "--steps", "4", "--checkpoint-every", "2", "--no-sample"]
    launch("fsdp_cpu", "finetune_sd35.py", [*args, "--output-dir", str(root / "straight")], env)
    launch("fsdp_cpu", "finetune_sd35.py", [*args, "--stop-at", "2", "--output-dir", str(root / "resumed")], env)
    launch("fsdp_cpu", "finetune_sd35.py", [*args, "--resume", "--output-dir", str(root / "resumed")], env)
    launch("ddp_cpu", "finetune_sd35.py", [*args, "--output-dir", str(root / "ddp")], env)
    return root


def test_fsdp_run_shards_and_resumes_exactly(fsdp_runs):
    straight, resumed = fsdp_runs / "straight", fsdp_runs / "resumed"
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["fsdp"] is True and summary["processes"] == 2
    ranks = [json.loads((straight / "ranks" / f"rank{r}.json").read_text())["fingerprint"] for r in (0, 1)]
    assert ranks[0] == ranks[1] == summary["fingerprint"]  # the gathered weights, the same seen from both ranks
    a, b = checkpoint(straight, 4), checkpoint(resumed, 4)
    assert max_difference(a["model"], b["model"]) == 0.0
    assert max_difference(optimizer_tensors(a), optimizer_tensors(b)) == 0.0
    assert max_difference(a["ema"]["shadow"], b["ema"]["shadow"]) == 0.0
    for column in ("loss", "base_mse", "detail_mse", "grad_norm"):
        assert csv_column(straight / "log.csv", column) == csv_column(resumed / "log.csv", column)


def test_fsdp_matches_ddp(fsdp_runs):
    fsdp, ddp = checkpoint(fsdp_runs / "straight", 4), checkpoint(fsdp_runs / "ddp", 4)
    assert json.loads((fsdp_runs / "ddp" / "summary.json").read_text())["fsdp"] is False
    assert max_difference(fsdp["model"], ddp["model"]) < 1e-6
    assert max_difference(optimizer_tensors(fsdp), optimizer_tensors(ddp)) < 1e-6
    # the whole weights in the single-process layout: every trainable tensor, unsharded shapes
    assert fsdp["model"]["pos_embed.proj.weight"].shape == ddp["model"]["pos_embed.proj.weight"].shape


def test_fsdp_checkpoint_resumes_and_samples_in_one_process(fsdp_runs, env, tmp_path):
    out = tmp_path / "single"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(fsdp_runs / "resumed" / "checkpoints" / "step_0000002.pt", out / "checkpoints")
    p = launch(None, "finetune_sd35.py", [*FAST, "--steps", "3", "--resume", "--output-dir", str(out)], env)
    assert "at step 2" in p.stdout + p.stderr
    assert (out / "pipeline" / "model_index.json").exists() and (out / "samples.png").exists()
    assert json.loads((out / "summary.json").read_text())["processes"] == 1


def test_fsdp_full_finetuning_writes_the_pipeline(env, tmp_path):
    """--full under FSDP: every weight sharded; the main process rebuilds the unsharded model for
    the pipeline."""
    out = tmp_path / "full"
    launch("fsdp_cpu", "finetune_sd35.py", [*FAST, "--full", "--steps", "2", "--output-dir", str(out)], env)
    s = json.loads((out / "summary.json").read_text())
    assert s["fsdp"] is True and s["trainable_parameters"] > 10 * 29632
    assert (out / "pipeline" / "transformer" / "config.json").exists()


def test_train_vae_fsdp_matches_ddp(env, quick_pipeline, tmp_path):
    args = ["--base-vae", str(quick_pipeline), *VAE_FAST]
    launch("fsdp_cpu", "train_vae.py", [*args, "--output-dir", str(tmp_path / "fsdp")], env)
    launch("ddp_cpu", "train_vae.py", [*args, "--output-dir", str(tmp_path / "ddp")], env)
    a, b = checkpoint(tmp_path / "fsdp", 3), checkpoint(tmp_path / "ddp", 3)
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["fsdp"] is True
    assert max_difference(a["model"], b["model"]) < 1e-5


def test_finetune_dit_fsdp_matches_ddp_and_writes_the_pipeline(env, tmp_path):
    dit = ["--quick-default", "--batch-size", "8", "--crops-per-image", "1", "--no-progress", "--sample-steps", "2",
           "--samples-per-class", "1", "--steps", "2"]
    launch("fsdp_cpu", "finetune_dit.py", [*dit, "--output-dir", str(tmp_path / "fsdp")], env)
    launch("ddp_cpu", "finetune_dit.py", [*dit, "--no-sample", "--output-dir", str(tmp_path / "ddp")], env)
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["fsdp"] is True
    assert (tmp_path / "fsdp" / "pipeline" / "model_index.json").exists()
    a, b = checkpoint(tmp_path / "fsdp", 2), checkpoint(tmp_path / "ddp", 2)
    assert max_difference(a["model"], b["model"]) < 1e-6


def test_finetune_flux_fsdp_matches_ddp_and_writes_the_pipeline(env, tmp_path):
    """FLUX's double and single blocks are the FSDP units; LoRA under FSDP = DDP."""
    args = [*FAST, "--steps", "2", "--checkpoint-every", "2"]
    launch("fsdp_cpu", "finetune_flux.py", [*args, "--output-dir", str(tmp_path / "fsdp")], env)
    launch("ddp_cpu", "finetune_flux.py", [*args, "--no-sample", "--output-dir", str(tmp_path / "ddp")], env)
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["fsdp"] is True
    assert json.loads((tmp_path / "fsdp" / "pipeline" / "model_index.json").read_text())["_class_name"] == \
        "DAVAEFluxPipeline"
    a, b = checkpoint(tmp_path / "fsdp", 2), checkpoint(tmp_path / "ddp", 2)
    assert max_difference(a["model"], b["model"]) < 1e-6
    assert "x_embedder.weight" in a["model"]


def test_block_units_and_reshard_setting(monkeypatch):
    from torch import nn

    from davae_ext.training.sharding import block_units, reshard_after_forward_from_env

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 2)
            self.transformer_blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2)) for _ in range(2)])
            self.decoder = nn.Module()
            self.decoder.up_blocks = nn.ModuleList([nn.Linear(2, 2)])
            self.decoder.mid_block = nn.Linear(2, 2)

    assert [n for n, _ in block_units(Net())] == ["transformer_blocks.0", "transformer_blocks.1", "decoder.up_blocks.0",
                                                   "decoder.mid_block"]
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert reshard_after_forward_from_env() is False
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "SHARD_GRAD_OP")
    assert reshard_after_forward_from_env() is False
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "sometimes")
    with pytest.raises(ValueError, match="FSDP_RESHARD_AFTER_FORWARD"):
        reshard_after_forward_from_env()


def test_a_run_ends_only_when_every_process_reaches_its_end():
    """No process destroys the process group and exits while another is still writing the pipeline
    or sampling: accelerate's end comes after a barrier (and neither in a run nested in another's)."""
    from davae_ext.training.common import TrainingRun

    calls = []

    class Accelerator:
        def wait_for_everyone(self):
            calls.append("barrier")

        def end_training(self):
            calls.append("end")

    run = object.__new__(TrainingRun)
    run.accelerator, run.local = Accelerator(), False
    run.end_training()
    assert calls == ["barrier", "end"]
    calls.clear()
    run.local = True
    run.end_training()
    assert calls == []


@pytest.mark.parametrize("world", [None, "2"])
def test_a_launched_process_leaves_without_the_interpreters_shutdown(world):
    """Under a multi-process launch a finished script ends with its output flushed and no
    interpreter shutdown (the atexit hook does not run); a single process exits as usual."""
    code = ("import atexit, sys; from davae_ext.training.cli import exit_launched_process; "
            "atexit.register(lambda: print('shutdown ran')); sys.stdout.write('run finished'); "
            "exit_launched_process()")
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"} | ({"WORLD_SIZE": world} if world else {})
    env.pop("PYTHONUNBUFFERED", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("run finished")
    assert ("shutdown ran" in p.stdout) == (world is None)
