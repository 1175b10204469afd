"""The training engine on real data: determinism, kill -9 and resume, warm-up, NaN, checkpoints."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from medmtl.config import parse_config, save_config
from medmtl.engine import checkpoint as ckpt
from medmtl.engine.loop import Trainer, TrainingError, fit
from tests.conftest import REPO, need_data


def _cfg(tmp_path, cache, **train):
    need_data("medmnist")
    raw = {
        "name": "engine", "seed": 3, "cache_dir": str(cache), "run_dir": str(tmp_path / "run"),
        "tasks": [
            {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "benign_or_normal"], "target": "label",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
             "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}},
            {"name": "retinamnist", "kind": "ordinal", "classes": ["0", "1", "2", "3", "4"], "target": "label",
             "role": "auxiliary",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/retinamnist.npz"},
             "image": {"size": 28, "mode": "RGB"}, "split": {"method": "official"}},
        ],
        "leakage": {"policy": "off"},
        "data": {"batch_size": 16, "augmentation": "s0", "size": 28, "limit_train": 64, "limit_eval": 48},
        "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 3, "optimizer": {"lr": 0.05}, "mlflow": False, **train},
    }
    return parse_config(raw), raw


@pytest.fixture(scope="module")
def medmnist_data(tmp_path_factory, shared_cache):
    from medmtl.data.pipeline import prepare

    cfg, _ = _cfg(tmp_path_factory.mktemp("prep"), shared_cache)
    return prepare(cfg, progress=False)


def _weights(path):
    return ckpt.load(path)["model"]


def test_same_seed_same_numbers(tmp_path, shared_cache, medmnist_data):
    runs = []
    for k in range(2):
        cfg, _ = _cfg(tmp_path / str(k), shared_cache)
        runs.append(fit(cfg, medmnist_data, tmp_path / str(k) / "run", progress=False))
    assert runs[0].history == [dict(r, seconds=runs[0].history[i]["seconds"]) for i, r in enumerate(runs[1].history)]
    a, b = (_weights(tmp_path / str(k) / "run/checkpoints/last.ckpt") for k in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = (tmp_path / "0/run/history.csv").read_text().splitlines()
    assert len(hist) == 4 and "train_loss/breastmnist" in hist[0] and "val_auc/retinamnist" in hist[0]


def test_best_checkpoint_is_a_copy_not_the_live_model(tmp_path, shared_cache, medmnist_data):
    cfg, _ = _cfg(tmp_path, shared_cache, epochs=4)
    res = fit(cfg, medmnist_data, tmp_path / "run", progress=False)
    best = ckpt.load(tmp_path / "run/checkpoints/best.ckpt")
    last = ckpt.load(tmp_path / "run/checkpoints/last.ckpt")
    assert best["epoch"] == res.best_epoch
    if res.best_epoch < 4:          # the best epoch's weights, not the final ones
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert set(best["metrics"]) == {"breastmnist", "retinamnist"}


def test_kill_dash_nine_then_resume_ends_with_the_same_weights(tmp_path, shared_cache, medmnist_data):
    cfg, raw = _cfg(tmp_path, shared_cache, epochs=6)
    raw["data"]["limit_train"] = 400
    ref = tmp_path / "ref"
    cfg_ref = parse_config({**raw, "run_dir": str(ref)})
    fit(cfg_ref, medmnist_data, ref, progress=False)

    run = tmp_path / "killed"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**raw, "run_dir": str(run)}))
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))}
    cli = [sys.executable, "-m", "medmtl.cli"]
    proc = subprocess.Popen([*cli, "train", str(path), "--no-progress"], cwd=REPO, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        hist = run / "history.csv"
        if hist.is_file() and len(hist.read_text().splitlines()) >= 3:   # two epochs written
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = ckpt.load(run / "checkpoints/last.ckpt")["epoch"]
    assert 1 <= done < 6, f"the run was not killed mid-way (epoch {done})"
    subprocess.run([*cli, "train", "--resume", str(run), "--no-progress"], cwd=REPO, env=env, check=True)
    a, b = _weights(ref / "checkpoints/last.ckpt"), _weights(run / "checkpoints/last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.load(run / "checkpoints/last.ckpt")["epoch"] == 6


def test_warmup_leaves_trunk_weights_and_bn_statistics_unchanged(tmp_path, shared_cache, medmnist_data):
    cfg, _ = _cfg(tmp_path, shared_cache, warmup={"steps": 3}, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    trunk0 = {k: v.clone() for k, v in trainer.net.trunk.state_dict().items()}
    heads0 = {k: v.clone() for k, v in trainer.net.heads.state_dict().items()}
    batches = iter(trainer.train_loader)
    for _ in range(3):
        trainer.train_step(next(batches))
    after = trainer.net.trunk.state_dict()
    assert all(torch.equal(trunk0[k], after[k]) for k in trunk0)           # weights and running stats
    assert any(not torch.equal(heads0[k], v) for k, v in trainer.net.heads.state_dict().items())
    trainer.train_step(next(batches))                                      # warm-up over: trunk moves
    assert any(not torch.equal(trunk0[k], v) for k, v in trainer.net.trunk.state_dict().items())


def test_freeze_stages_keeps_the_first_stage(tmp_path, shared_cache, medmnist_data):
    cfg, _ = _cfg(tmp_path, shared_cache, freeze_stages=1, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    stem0 = {k: v.clone() for k, v in trainer.net.trunk.stem.state_dict().items()}
    for batch, _ in zip(trainer.train_loader, range(3)):
        trainer.train_step(batch)
    assert all(torch.equal(stem0[k], v) for k, v in trainer.net.trunk.stem.state_dict().items())


def test_nan_loss_stops_with_step_task_and_checkpoint(tmp_path, shared_cache, medmnist_data, monkeypatch):
    import medmtl.engine.loop as loop

    real = loop.compute_losses
    calls = {"n": 0}

    def poisoned(specs, outputs, batch):
        out = real(specs, outputs, batch)
        calls["n"] += 1
        if calls["n"] >= 12 and "retinamnist" in out:   # in epoch 2, after a checkpoint exists
            out["retinamnist"] = out["retinamnist"] * float("nan")
        return out

    monkeypatch.setattr(loop, "compute_losses", poisoned)
    cfg, _ = _cfg(tmp_path, shared_cache, epochs=3)
    with pytest.raises(TrainingError, match=r"task 'retinamnist' is nan at step \d+ .*last good checkpoint: .*last.ckpt"):
        fit(cfg, medmnist_data, tmp_path / "run", progress=False)


def test_bn_adaptation_keeps_eval_outputs(tmp_path, shared_cache, medmnist_data):
    from medmtl.engine.optim import adapt_batchnorm

    cfg, _ = _cfg(tmp_path, shared_cache, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    net = trainer.net
    batches = [b for b, _ in zip(trainer.train_loader, range(3))]
    x = batches[0]["image"]
    net.eval()
    before = net.trunk(x)
    mean0 = net.trunk.stem[1].running_mean.clone()
    n = adapt_batchnorm(net, batches, lambda b: net(b["image"]))
    net.eval()
    assert n == 2
    assert not torch.allclose(net.trunk.stem[1].running_mean, mean0)     # statistics re-estimated
    torch.testing.assert_close(net.trunk(x), before, rtol=1e-4, atol=1e-4)  # same function


def test_mlflow_store_in_run_dir_and_predict_cli(tmp_path, shared_cache, medmnist_data):
    from typer.testing import CliRunner

    from medmtl.cli import app
    from medmtl.config import save_config

    cfg, _ = _cfg(tmp_path, shared_cache, epochs=1, mlflow=True)
    run = tmp_path / "run"
    save_config(cfg, run)
    fit(cfg, medmnist_data, run, progress=False)
    assert (run / "mlflow.db").is_file() and (run / "mlflow_run_id").is_file()
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(img)
    out = CliRunner().invoke(app, ["predict", str(run), str(img), "--task", "breastmnist"])
    assert out.exit_code == 0, out.output
    header, row = out.stdout.strip().splitlines()
    assert header == "image,task,score_malignant,score_benign_or_normal,predicted"
    scores = [float(v) for v in row.split(",")[2:4]]
    assert abs(sum(scores) - 1) < 1e-5


def test_ddp_two_processes_on_cpu(tmp_path, shared_cache, medmnist_data):
    """`--devices 2` runs the same multi-task loop under DDP (gloo on CPU): two ranks, one run dir.
    Batches of 4 from two tasks leave a head without rows in some steps and the warm-up freezes
    the trunk: parameters without a gradient, which plain DDP stops on. ``uncertainty`` has
    parameters outside the DDP model; the loop checks every epoch that the ranks hold the same
    weights (and fails the run otherwise)."""
    _, raw = _cfg(tmp_path, shared_cache, epochs=2, accelerator="cpu", warmup={"steps": 2},
                  weighting={"name": "uncertainty"})
    raw["data"]["batch_size"] = 4
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / "ddp")}))
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))}
    out = subprocess.run([sys.executable, "-m", "medmtl.cli", "train", str(path), "--devices", "2", "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    assert ckpt.load(tmp_path / "ddp/checkpoints/last.ckpt")["epoch"] == 2
    assert len((tmp_path / "ddp/history.csv").read_text().splitlines()) == 3


def test_mixed_precision_path_runs_on_cpu_with_bf16(tmp_path, shared_cache, medmnist_data):
    """The mixed-precision path of the loop (Fabric's autocast around the forward, its backward)
    runs here with bf16 on the CPU: the trunk computes in bfloat16, losses stay finite, and the
    best checkpoint keeps float32 weights. (16-mixed needs CUDA, which this machine lacks.)"""
    import torch

    cfg, _ = _cfg(tmp_path, shared_cache, epochs=1, precision="bf16-mixed")
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    seen = []
    conv = next(m for m in trainer.net.trunk.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses, _, _ = trainer.train_step(next(iter(trainer.train_loader)))
    assert seen and seen[0] == torch.bfloat16
    assert all(np.isfinite(v) for v in losses.values())
    result = trainer.fit()
    weights = ckpt.load(result.run_dir / "checkpoints" / "best.ckpt")["model"]
    assert all(v.dtype == torch.float32 for k, v in weights.items() if v.is_floating_point())


@pytest.fixture
def fp16_scalers(monkeypatch):
    """The GradScalers of the Fabrics made with ``precision: 16-mixed``, fp16 autocast included.

    On a CUDA GPU that is Fabric's own 16-mixed. On the CPU Fabric swaps 16-mixed for bf16, so the
    plugin is passed by hand (torch has CPU fp16 autocast and a CPU GradScaler): the same
    loss-scaling path that a GPU takes."""
    import lightning.fabric as lf
    from lightning.fabric.plugins.precision import MixedPrecision

    real = lf.Fabric
    scalers = []

    def fabric(*, precision, **kw):
        if precision != "16-mixed" or torch.cuda.is_available():
            made = real(precision=precision, **kw)
        else:
            made = real(plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))], **kw)
        if precision == "16-mixed":
            scalers.append(made.strategy.precision.scaler)
        return made

    monkeypatch.setattr(lf, "Fabric", fabric)
    return scalers


def _step_delta(trainer, batch):
    before = {k: v.detach().clone() for k, v in trainer.net.named_parameters()}
    trainer.train_step(batch)
    return torch.cat([(p.detach() - before[k]).flatten() for k, p in trainer.net.named_parameters()])


def test_fp16_loss_scaling_gives_the_float32_update(tmp_path, shared_cache, medmnist_data, fp16_scalers):
    """Under fp16 the gradients are computed scaled and unscaled before the step (and before the
    clip): one step moves the weights as a float32 step does, not 65536 times less or more."""
    deltas = []
    for precision in ("32-true", "16-mixed"):
        cfg, _ = _cfg(tmp_path / precision, shared_cache, precision=precision, grad_clip=5.0)
        trainer = Trainer(cfg, medmnist_data, tmp_path / precision / "run", progress=False)
        batch = next(iter(trainer.train_loader))
        if precision == "16-mixed":
            seen = []
            conv = next(m for m in trainer.net.trunk.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        deltas.append(_step_delta(trainer, batch))
    assert seen[0] == torch.float16 and fp16_scalers[0].get_scale() == 65536.0
    full, half = deltas
    cosine = float(torch.nn.functional.cosine_similarity(full, half, dim=0))
    assert full.norm() > 0 and cosine > 0.98 and 0.9 < float(half.norm() / full.norm()) < 1.1


def test_fp16_overflow_skips_the_step_and_resume_keeps_the_loss_scale(tmp_path, shared_cache, medmnist_data,
                                                                      fp16_scalers):
    """A loss scale too large for fp16 makes the gradients overflow: the scaler skips that step
    (weights unchanged, no NaN error: the loss itself is finite) and halves the scale; the scale
    is part of the last checkpoint, so a resumed run skips the same steps."""
    cfg, _ = _cfg(tmp_path, shared_cache, precision="16-mixed", epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    scaler = fp16_scalers[0]
    # a scale whose scaled loss is still finite in float32 while its fp16 gradients are not
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0 ** 100})
    delta = _step_delta(trainer, next(iter(trainer.train_loader)))
    assert float(delta.abs().max()) == 0.0 and scaler.get_scale() == 2.0 ** 99
    state = trainer.state()
    assert state["precision"]["scale"] == 2.0 ** 99
    ckpt.save_atomic(state, tmp_path / "last.ckpt")
    again = Trainer(cfg, medmnist_data, tmp_path / "again", progress=False)
    again.load_state(ckpt.load(tmp_path / "last.ckpt"))
    assert fp16_scalers[1].get_scale() == 2.0 ** 99


@pytest.mark.parametrize("option, message", [({"precision": "16-mixed"}, r"'upgrad'.*loss scaling.*bf16-mixed"),
                                             ({"devices": 2}, r"'upgrad'.*synchronisation.*devices: 1")])
def test_a_gradient_based_weighting_is_refused_with_fp16_or_ddp(tmp_path, shared_cache, medmnist_data, option,
                                                                 message):
    """TorchJD computes the task gradients outside fp16's loss scaler and outside DDP's all-reduce;
    both pairs are refused by name before any process starts."""
    from medmtl.errors import MedmtlError

    cfg, _ = _cfg(tmp_path, shared_cache, weighting={"name": "upgrad"}, **option)
    with pytest.raises(MedmtlError, match=message):
        Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)


def test_determinism_switch_sets_torch_and_cudnn_state():
    """``train.deterministic`` (default on) picks reproducible kernels; off lets cuDNN benchmark."""
    from medmtl.engine.loop import set_determinism

    try:
        set_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        set_determinism(True)


def test_a_trained_model_beats_chance_and_one_trained_on_shuffled_labels_does_not(tmp_path, shared_cache):
    """The chance check of the study tests (tests.conftest.assert_beats_chance) on two models of one
    recipe: BreastMNIST's real training labels, and the same labels shuffled once. The first must
    pass it, the second must not: the check tells learning from memorising noise."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from medmtl.data.pipeline import prepare
    from medmtl.evaluation.scoring import score_run
    from tests.conftest import assert_beats_chance, chance_level

    cfg, raw = _cfg(tmp_path, shared_cache, epochs=4)
    raw["tasks"] = raw["tasks"][:1]
    raw["data"].update({"limit_train": None, "limit_eval": None})
    cfg = parse_config(raw)
    data = prepare(cfg, progress=False)
    train = data.rows("breastmnist", "train")
    shuffled = data.labels["breastmnist"].copy()
    shuffled[train] = np.random.default_rng(0).permutation(shuffled[train])
    noise = dataclasses.replace(data, labels={**data.labels, "breastmnist": shuffled})
    frames = []
    for name, d in (("real", data), ("shuffled", noise)):
        run = tmp_path / name
        save_config(cfg, run)
        fit(cfg, d, run, progress=False)
        frames.append(score_run(run, data, ["breastmnist"], "test", False, name, 0))
    pred = pd.concat(frames, ignore_index=True)
    assert_beats_chance(pred, "real", "breastmnist", "benign_or_normal")
    rows = pred[pred.arm == "shuffled"]
    y, s = (rows["y_true"] == 1).astype(int).to_numpy(), rows["score_benign_or_normal"].to_numpy()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, s) <= chance_level(y, s)


def test_a_checkpoint_saved_when_early_stopping_fired_trains_no_more(tmp_path, shared_cache, medmnist_data):
    """Resumed from the checkpoint of an early-stopped training (a crash in the scoring after it),
    training does not start again: no epoch is added, the stop is reported."""
    cfg, _ = _cfg(tmp_path, shared_cache, epochs=5, early_stopping={"monitor": "main", "patience": 2})
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    trainer.epoch, trainer.bad_epochs = 3, 2          # the state saved when the stop fired
    (tmp_path / "run").mkdir(exist_ok=True)
    result = trainer.fit()
    assert result.stopped_early and trainer.epoch == 3 and trainer.history == []
    fresh = Trainer(cfg, medmnist_data, tmp_path / "run2", progress=False)
    assert fresh.bad_epochs == 0 and len(fresh.fit().history) >= 3   # patience 2: at least 3 epochs


def test_determinism_is_strict_and_a_kernel_without_one_is_named(tmp_path, shared_cache, medmnist_data, monkeypatch):
    """train.deterministic: torch raises (not warns) on a kernel with no deterministic version, and
    the loop says which, and what to set instead; cuBLAS's workspace is set once medmtl is imported."""
    import medmtl.engine.loop as loop

    cfg, _ = _cfg(tmp_path, shared_cache, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")

    def no_kernel(*a, **k):
        raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, "
                           "but you set 'torch.use_deterministic_algorithms(True)'.\nmore")

    monkeypatch.setattr(loop, "compute_losses", no_kernel)
    with pytest.raises(TrainingError, match=r"step 0: upsample_bilinear2d_backward_out_cuda does not have .* "
                                            r"With train.deterministic: false"):
        trainer.train_step(next(iter(trainer.train_loader)))
