"""Every script refuses bad arguments before any expensive work: each case below exits with code 2,
names the flag in its error, and leaves the cache and output folders as they were (no tiny model
built, no checkpoint, no latent cache).

The cases run in one child process, one after the other, each calling the script's ``main`` (the
process's imports are paid once, not 40 times; a case that reached training would not return:
the child's timeout is the guard against a script that starts building or training).
bench/script_arguments.py times each case in its own process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GUARD_S = 120  # building the tiny model alone takes minutes on 2 cores


def make_fixtures(root: Path) -> Path:
    """Folders the cases point at: none of them holds a real model, so a case that got past its
    argument checks would fail (or start building) instead of passing."""
    (root / "empty").mkdir()
    (root / "not_images").mkdir()
    (root / "not_images" / "photo.png").write_text("not an image")
    (root / "one_image").mkdir()
    Image.new("RGB", (8, 8)).save(root / "one_image" / "a.png")
    (root / "a_file.txt").write_text("x")
    (root / "empty_prompts.txt").write_text("\n\n")
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    for name, channels in (("davae4", 4), ("davae16_no_stats", 16)):
        folder = root / name
        folder.mkdir()
        config = {"_class_name": "DAVAE", "scale": 2, "detail_channels": channels,
                  "base_vae_config": {"latent_channels": channels, "block_out_channels": [16, 32, 64, 64]},
                  "detail_mean": [0.0] * channels if channels == 4 else None}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (root / "cache").mkdir()
    (root / "out").mkdir()
    return root


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("args"))


CASES = [
    # script, arguments ({root} is the fixtures folder), the flag the error must name
    ("train_vae", ["--steps", "-5"], "--steps"),
    ("train_vae", ["--batch-size", "0"], "--batch-size"),
    ("train_vae", ["--lr", "0"], "--lr"),
    ("train_vae", ["--detail-dropout", "1.5"], "--detail-dropout"),
    ("train_vae", ["--data", "{root}/nonexistent"], "--data"),
    ("train_vae", ["--data", "{root}/empty"], "--data"),
    ("train_vae", ["--data", "{root}/not_images"], "--data"),
    ("train_vae", ["--data", "{root}/a_file.txt"], "--data"),
    ("train_vae", ["--eval-data", "{root}/empty"], "--eval-data"),
    ("train_vae", ["--resolution", "100"], "--resolution"),
    ("train_vae", ["--train-crop", "512"], "--train-crop"),
    ("train_vae", ["--detail-channels", "24"], "--detail-channels"),
    ("train_vae", ["--base-vae", "{root}/not_a_model"], "--base-vae"),
    ("train_vae", ["--lpips-weights", "{root}/nonexistent.pth"], "--lpips-weights"),
    ("train_vae", ["--resume"], "--resume"),
    ("eval_vae", ["--davae", "{root}/nonexistent"], "--davae"),
    ("eval_vae", ["--davae", "{root}/not_a_model"], "--davae"),
    ("eval_vae", ["--davae", "{root}/davae4", "--resolution", "40"], "--resolution"),
    ("eval_vae", ["--davae", "{root}/davae4", "--data", "{root}/not_images"], "--data"),
    ("eval_vae", ["--limit", "0"], "--limit"),
    ("finetune_sd35", ["--steps", "-5"], "--steps"),
    ("finetune_sd35", ["--caption-dropout", "2"], "--caption-dropout"),
    ("finetune_sd35", ["--ema-decay", "1"], "--ema-decay"),
    ("finetune_sd35", ["--model", "{root}/not_a_model"], "--model"),
    ("finetune_sd35", ["--davae", "{root}/davae4"], "--davae"),
    ("finetune_sd35", ["--davae", "{root}/davae16_no_stats"], "--davae"),
    ("finetune_sd35", ["--data", "{root}/not_images"], "--data"),
    ("finetune_sd35", ["--resolution", "100"], "--resolution"),
    ("finetune_sd35", ["--prompts", "{root}/empty_prompts.txt", "--synthetic", "2"], "--prompts"),
    ("finetune_sd35", ["--resume"], "--resume"),
    ("finetune_sd35", ["--trainable-dtype", "bfloat16"], "--trainable-dtype"),
    ("finetune_sd35", ["--frozen-dtype", "bfloat16"], "--frozen-dtype"),
    ("finetune_sd35", ["--recipe", "mine"], "--recipe"),
    ("finetune_flux", ["--train-guidance", "-1"], "--train-guidance"),
    ("finetune_flux", ["--max-sequence-length", "0"], "--max-sequence-length"),
    ("finetune_flux", ["--model", "{root}/not_a_model"], "--model"),
    ("finetune_flux", ["--davae", "{root}/davae4"], "--davae"),
    ("finetune_flux", ["--resolution", "48"], "--resolution"),  # DA-VAE factor 16 x packing 2
    ("finetune_flux", ["--lora-targets", ","], "--lora-targets"),
    ("make_synthetic_data", ["--count", "0"], "--count"),
    ("make_synthetic_data", ["--model", "{root}/not_a_model"], "--model"),
    ("make_synthetic_data", ["--prompts", "{root}/nonexistent.txt"], "--prompts"),
    ("make_synthetic_data", ["--resolution", "100"], "--resolution"),
    ("sample", ["--pipeline", "{root}/not_a_model"], "--pipeline"),
    ("sample", ["--steps", "0"], "--steps"),
    ("sample", ["--prompts", "{root}/empty_prompts.txt"], "--prompts"),
    ("sample", ["--base-model", "{root}/not_a_model"], "--base-model"),
    ("finetune_dit", ["--data", "{root}/one_image"], "--data"),  # images, but no class subfolders
    ("finetune_dit", ["--model", "{root}/not_a_model"], "--model"),
    ("finetune_dit", ["--label-dropout", "2"], "--label-dropout"),
    ("finetune_dit", ["--recipe", "paper"], "--recipe"),
    ("finetune_dit", ["--davae", "{root}/davae4"], "--davae"),
    ("finetune_dit", ["--resume"], "--resume"),
    ("sample_dit", ["--pipeline", "{root}/not_a_model"], "--pipeline"),
    ("sample_dit", ["--base-model", "{root}/not_a_model"], "--base-model"),
    ("eval_dit", ["--no-fid", "--pipeline", "{root}/not_a_model"], "--pipeline"),
    ("eval_dit", ["--pipeline", "{root}/not_a_model"], "--inception"),  # FID without a local Inception
]
EXTRA_CASES = [  # run with the others; checked by their own tests
    ("train_vae", ["--data", "{root}/one_image", "--lpips-weights", "{root}/nonexistent.pth"], "--lpips-weights"),
]


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_case(script: str, args: list[str], root: Path, scripts_dir: Path = ROOT / "train",
             timeout: float = GUARD_S, python: tuple = (sys.executable,)) -> subprocess.CompletedProcess:
    """The script on the case's arguments, its cache and output inside ``root``."""
    argv = [a.format(root=root) for a in args] + ["--output-dir", str(root / "out" / script)]
    env = dict(os.environ, DAVAE_CACHE=str(root / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([*python, str(scripts_dir / f"{script}.py"), *argv], capture_output=True, text=True,
                          env=env, cwd=root, timeout=timeout)


_DRIVER = textwrap.dedent("""
    import contextlib, importlib.util, io, json, os, sys
    root, scripts_dir, cases = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
    def snapshot():
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in dirs + files)
    results = []
    for script, argv in cases:
        spec = importlib.util.spec_from_file_location(f"_case_{script}", os.path.join(scripts_dir, script + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        before, err, code = snapshot(), io.StringIO(), None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                module.main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
        results.append({"code": code, "stderr": err.getvalue()[-2000:], "changed": snapshot() != before})
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def case_results(fixtures):
    """Every case's exit code, stderr and whether it changed the fixtures folder, from one child."""
    cases = CASES + EXTRA_CASES
    argvs = [[script, [a.format(root=fixtures) for a in args] + ["--output-dir", str(fixtures / "out" / script)]]
             for script, args, _ in cases]
    env = dict(os.environ, DAVAE_CACHE=str(fixtures / "cache"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _DRIVER, str(fixtures), str(ROOT / "train")], input=json.dumps(argvs),
                       capture_output=True, text=True, env=env, cwd=fixtures, timeout=GUARD_S + 5 * len(cases))
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    return {(script, tuple(args)): r for (script, args, _), r in zip(cases, results)}


@pytest.mark.parametrize("script,args,flag", CASES, ids=[f"{s}:{' '.join(a)}" for s, a, _ in CASES])
def test_bad_argument_fails_first(case_results, script, args, flag):
    r = case_results[(script, tuple(args))]
    assert r["code"] == 2, f"exit code {r['code']}\n{r['stderr']}"
    last = r["stderr"].strip().splitlines()[-1]
    assert flag in last and "error:" in last, r["stderr"]
    assert not r["changed"], "the failed run created files"


def test_a_good_folder_passes_the_data_check(case_results):
    """The image-folder check accepts a folder with one readable image: with a good --data the
    run gets past that check and fails on --lpips-weights, which is checked after it."""
    r = case_results[EXTRA_CASES[0][0], tuple(EXTRA_CASES[0][1])]
    last = r["stderr"].strip().splitlines()[-1]
    assert r["code"] == 2 and "--lpips-weights" in last and "--data" not in last, r["stderr"]


def test_one_case_in_its_own_process(fixtures):
    """The per-process path bench/script_arguments.py times: the same exit code and message."""
    p = run_case("train_vae", ["--steps", "-5"], fixtures)
    assert p.returncode == 2 and "--steps" in p.stderr.strip().splitlines()[-1]
