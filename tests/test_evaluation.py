"""evaluate.py on VAE checkpoints and with chosen metrics; the metrics it refuses."""

import json

import pytest

import evaluate
from potentialflow.lit.evaluation import applicable_metrics, load_module


def test_vae_checkpoint_gets_likelihood_and_reconstructions(trained_run, mnist_root, tmp_path):
    checkpoint = trained_run / "runs/mnist_vae/checkpoints/last.ckpt"
    args = [str(checkpoint), "--out", str(tmp_path), "--data-root", str(mnist_root)]
    assert evaluate.main([*args, "--likelihood-images", "8", "--likelihood-samples", "4"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())["scores"]
    assert scores["log_likelihood"] < 0 and scores["importance_samples"] == 4
    assert scores["num_images"] == 8
    assert (tmp_path / "reconstructions.png").stat().st_size > 0


def test_only_the_chosen_metrics_run(trained_run, mnist_root, tmp_path):
    checkpoint = trained_run / "runs/mnist_traversal/checkpoints/last.ckpt"
    args = [str(checkpoint), "--out", str(tmp_path), "--data-root", str(mnist_root)]
    assert evaluate.main([*args, "--metrics", "vp", "--num-samples", "40"]) == 0
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["metrics"] == ["vp"]
    assert set(report["scores"]) == {"vp"}
    assert 0 <= report["scores"]["vp"]["vp"] <= 1


def test_metrics_that_do_not_apply_are_refused(trained_run, mnist_root, tmp_path, capsys):
    checkpoint = trained_run / "runs/mnist_vae/checkpoints/last.ckpt"
    module, _ = load_module(checkpoint)
    assert applicable_metrics(module, object()) == ("likelihood",)
    args = [str(checkpoint), "--out", str(tmp_path), "--data-root", str(mnist_root)]
    assert evaluate.main([*args, "--metrics", "alignment"]) == 2
    assert "do not apply to a VAEModule on MNISTDataModule" in capsys.readouterr().err


@pytest.mark.slow
def test_factor_data_traversal_gets_alignment_and_disentanglement(tmp_path, monkeypatch):
    from tests.conftest import train_factor_configs

    monkeypatch.chdir(tmp_path)
    train_factor_configs("dsprites", test_size=64)
    checkpoint = tmp_path / "runs/dsprites_traversal/checkpoints/last.ckpt"
    assert evaluate.main([str(checkpoint), "--out", "eval", "--num-samples", "64"]) == 0
    scores = json.loads((tmp_path / "eval/scores.json").read_text())["scores"]
    assert len(scores["alignment"]["matrix"]) == 8 and len(scores["alignment"]["matrix"][0]) == 5
    assert 0 <= scores["disentanglement"]["mig"] <= 1
    assert (tmp_path / "eval/alignment.png").stat().st_size > 0
