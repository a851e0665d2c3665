"""Evaluation metrics, the decision threshold, plots, and blessing both ways against a baseline."""

import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import artifacts, config, errors
from pipeline.export import evaluate
from pipeline.export import saved_model as export
from tests.support import export_fixtures, tiny_tfds


def _pairwise_auc(labels, scores):
    """AUC by its definition: P(score of a happy > score of a sad), ties counting half."""
    positives = [s for s, label in zip(scores, labels, strict=True) if label]
    negatives = [s for s, label in zip(scores, labels, strict=True) if not label]
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)
    )
    return wins / (len(positives) * len(negatives))


def test_metrics_and_confusion_matrix():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    probabilities = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.55, 0.2])
    metrics = evaluate.compute_metrics(labels, probabilities, threshold=0.5)
    # true sad row: 3 called sad, 1 called happy; true happy row: 1 called sad, 3 called happy.
    assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["n"] == 8 and metrics["n_happy"] == 4
    stricter = evaluate.compute_metrics(labels, probabilities, threshold=0.65)
    assert stricter["confusion_matrix"] == [[4, 0], [2, 2]]


def test_auc_is_exact_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.uniform(size=200) * 0.6 + labels * 0.3, 1)  # many ties
    assert evaluate.roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert evaluate.roc_auc(np.ones(5), np.linspace(0, 1, 5)) is None


def test_served_class_ids_override_the_threshold():
    labels = np.array([0, 1])
    metrics = evaluate.compute_metrics(
        labels, np.array([0.4, 0.45]), 0.5, predictions=np.array([0, 1])
    )
    assert metrics["accuracy"] == 1.0


def test_threshold_maximises_youden_on_validation():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probabilities = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.8])
    threshold = evaluate.choose_threshold(labels, probabilities)
    assert 0.2 < threshold < 0.25  # 0.5 would call three of the four happy faces sad
    assert evaluate.compute_metrics(labels, probabilities, threshold)["accuracy"] == 1.0
    with pytest.raises(errors.UserError, match="both classes"):
        evaluate.choose_threshold(np.ones(4), probabilities[:4])


def _metrics(accuracy, auc):
    return {"accuracy": accuracy, "auc": auc}


def test_blessing_on_thresholds_alone():
    verdict = evaluate.bless(_metrics(0.8, 0.9), None, min_accuracy=0.7, min_auc=0.8)
    assert verdict["blessed"] and verdict["reasons"] == []
    verdict = evaluate.bless(_metrics(0.65, 0.9), None, min_accuracy=0.7, min_auc=0.8)
    assert not verdict["blessed"]
    assert verdict["reasons"] == ["accuracy 0.6500 < the minimum 0.7000"]
    undefined = evaluate.bless(_metrics(0.9, None), None, min_accuracy=0.7, min_auc=0.8)
    assert not undefined["blessed"] and "undefined" in undefined["reasons"][0]
    assert evaluate.bless(_metrics(0.9, None), None, min_accuracy=0.7, min_auc=0)["blessed"]


def test_blessing_against_the_pushed_model():
    baseline = _metrics(0.85, 0.92)
    worse = evaluate.bless(_metrics(0.84, 0.95), baseline, min_accuracy=0.7, min_auc=0.8)
    assert not worse["blessed"]
    assert worse["reasons"] == ["accuracy 0.8400 is worse than the pushed model's 0.8500"]
    assert evaluate.bless(_metrics(0.85, 0.92), baseline, 0.7, 0.8)["blessed"]
    tolerated = evaluate.bless(_metrics(0.84, 0.92), baseline, 0.7, 0.8, max_regression=0.02)
    assert tolerated["blessed"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tiny_tfds.build(directory, train=(0, 1), validation=(0, 1) * 3, test=(0, 1, 1) * 4)
    return directory


def _train_dir(directory, model, history=True):
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.keras"))
    if history:
        with open(os.path.join(directory, "history.csv"), "w") as handle:
            handle.write("epoch,accuracy,loss,val_accuracy,val_loss\n")
            handle.write("0,0.6,0.7,0.55,0.72\n1,0.8,0.5,0.75,0.55\n2,0.9,0.3,0.85,0.4\n")
    return str(directory)


def _evaluate(tmp_path, model_path, data_dir, baseline=None, **changes):
    """evaluate.run with the default config, `changes` to its evaluate section."""
    cfg = config.replace(config.Config(), **{f"evaluate.{name}": v for name, v in changes.items()})
    return evaluate.run(
        cfg,
        model_path=model_path,
        output_dir=str(tmp_path / "evaluation"),
        dataset=tiny_tfds.DATASET,
        data_dir=data_dir,
        baseline=baseline,
    )


def test_run_writes_metrics_plots_and_blesses_a_good_model(tmp_path, data_dir):
    model_path = _train_dir(tmp_path / "train", export_fixtures.brightness_model())
    result = _evaluate(tmp_path, model_path, data_dir)
    assert result["blessed"] and result["reasons"] == []
    assert result["metrics"]["accuracy"] == 1.0 and result["metrics"]["n"] == 12
    output = tmp_path / "evaluation"
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == [[4, 0], [0, 8]]
    assert metrics["auc"] == 1.0 and metrics["threshold"] == 0.5
    assert metrics["dataset"]["name"] == tiny_tfds.NAME and metrics["dataset"]["split"] == "test"
    blessing = json.loads((output / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["baseline"] is None
    assert blessing["model_sha256"] == artifacts.file_sha256(
        os.path.join(model_path, "model.keras")
    )
    for name in ("confusion_matrix.png", "roc_curve.png", "training_curves.png"):
        with Image.open(output / name) as picture:
            assert picture.format == "PNG" and picture.size[0] > 100
    assert sorted(os.listdir(output)) == sorted(result["files"] + ["blessing.json", "metrics.json"])


def test_run_chooses_the_threshold_on_validation(tmp_path, data_dir):
    # Every P(happy) is above 0.5 here: only a threshold chosen on validation separates them.
    model_path = _train_dir(
        tmp_path / "train", export_fixtures.brightness_model(offset=6.0), history=False
    )
    fixed = _evaluate(tmp_path, model_path, data_dir, min_accuracy=0.5)
    assert fixed["metrics"]["accuracy"] == pytest.approx(8 / 12)
    chosen = _evaluate(tmp_path, model_path, data_dir, threshold_policy="validation")
    assert chosen["metrics"]["threshold"] > 0.5
    assert chosen["metrics"]["accuracy"] == 1.0 and chosen["blessed"]
    assert "training_curves.png" not in chosen["files"]


def _push_baseline(serving_base, model):
    export.export_model(model, os.path.join(serving_base, "1"), 0.5, {"threshold": 0.5}, [])


def test_a_candidate_worse_than_the_pushed_model_is_not_blessed(tmp_path, data_dir):
    serving_base = str(tmp_path / "serving")
    _push_baseline(serving_base, export_fixtures.brightness_model())
    candidate = _train_dir(tmp_path / "train", export_fixtures.brightness_model(offset=6.0))
    result = _evaluate(tmp_path, candidate, data_dir, serving_base, min_accuracy=0.5)
    assert not result["blessed"]
    assert result["reasons"] == ["accuracy 0.6667 is worse than the pushed model's 1.0000"]
    assert result["baseline"] == os.path.join(serving_base, "1")
    blessing = json.loads((tmp_path / "evaluation" / "blessing.json").read_text())
    assert blessing["baseline"]["metrics"]["accuracy"] == 1.0
    assert {check["check"]: check["passed"] for check in blessing["checks"]} == {
        "min_accuracy": True,
        "min_auc": True,
        "baseline_accuracy": False,
        "baseline_auc": True,
    }


def test_a_candidate_better_than_the_pushed_model_is_blessed(tmp_path, data_dir):
    serving_base = str(tmp_path / "serving")
    _push_baseline(serving_base, export_fixtures.brightness_model(direction=-1.0))
    candidate = _train_dir(tmp_path / "train", export_fixtures.brightness_model())
    result = _evaluate(tmp_path, candidate, data_dir, serving_base)
    assert result["blessed"]
    blessing = json.loads((tmp_path / "evaluation" / "blessing.json").read_text())
    assert blessing["baseline"]["metrics"]["auc"] == 0.0


def test_run_refuses_a_missing_model_or_split(tmp_path, data_dir):
    with pytest.raises(errors.UserError, match="no trained model"):
        _evaluate(tmp_path, str(tmp_path / "nowhere"), data_dir)
    model_path = _train_dir(tmp_path / "train", export_fixtures.brightness_model(), history=False)
    with pytest.raises(errors.UserError, match="no split"):
        _evaluate(tmp_path, model_path, data_dir, test_split="holdout")
