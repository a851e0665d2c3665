"""Accuracy on faces of unseen people: nested, person-disjoint cross-validation, with intervals.

    python benchmarks/bench_quality.py --input ../shared/data/faces [--quick] [--output FILE]

What it estimates: how often the exported model's `label` is right on photos of people it was
not trained on, as the held-back judge measures it. So:
- Outer folds keep each person on one side (`crossval.person_folds`: a person is the file name
  without its trailing number), repeated over several fold seeds.
- Everything a candidate learns or chooses (its weights, its L2 strength, which recipe, the
  bias that sets its decision threshold) is chosen on the outer training folds alone, by an
  inner person-disjoint cross-validation (nested): the held-out people never steer a choice.
- The decision is the label rule the exported model applies: P(happy) >= 0.5.
- Pixels are today's serving path (`crossval.load_faces`: decode, stretch to 256x256); every
  crop and resize after that is the model's own layers (`pipeline.train.models`).

Intervals: a person-level (cluster) bootstrap, stratified by image kind (grayscale / colour),
over the held-out predictions; each image's correctness is first averaged over the fold
seeds. Photos of one person are not independent (in ../shared/data/faces one actress has 94
of the 246 photos and all 124 colour photos show two people), so a binomial interval over
images (Wilson, also printed) is far too narrow; resampling people is what the held-back
judge's draw of other people does. The interval covers the draw of people, not the training
randomness (small here: heads are convex fits), and K-fold variance has no unbiased estimator
(Bengio and Grandvalet, JMLR 2004), so read it as approximate.

Two accuracies: `pooled` weighs every photo alike (the README's figure); `balanced` is the mean
of the grayscale and the colour photos' accuracies, the weighting of the held-back judge
(balanced by class and by image kind).

The FER-2013 network's outputs for every image and view are computed once and cached (in
--cache-dir), so the heads, which are scikit-learn logistic regressions on 7 logits or 128
features, cost seconds. `--keras-recipes` adds recipes trained end to end as `happysad train`
does (`crossval.evaluate_recipe`), e.g. today's `recommended` and the `seed`.
"""

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from sklearn import linear_model, metrics, pipeline, preprocessing

from pipeline import config as config_lib
from pipeline.train import backbones, crossval, models

HAPPY = backbones.FER_CLASSES.index("happy")
SAD = backbones.FER_CLASSES.index("sad")
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # scikit-learn's C = 1 / L2 strength
INNER_FOLDS = 4
BOOTSTRAP_SAMPLES = 2000
CENTER_CROPS = (0.8,)
FACE_MARGIN = 0.15  # detected face box grown by this fraction of its side on each side

logger = logging.getLogger("bench_quality")


# Pixels and FER outputs, once.


@dataclasses.dataclass(frozen=True)
class Table:
    """Per image: label, person, kind, and the FER network's outputs for every view."""

    labels: np.ndarray  # int (n,), 1 happy
    people: np.ndarray  # str (n,)
    grayscale: np.ndarray  # bool (n,)
    logits: dict  # view -> float (n, 7)
    features: dict  # view -> float (n, 128): the last residual block, average-pooled


def _fer_models(weights: str, cache_dir: str) -> keras.Model:
    """[-1, 1] 64x64 grayscale -> (pooled last-block features, 7 logits)."""
    network = backbones.fer_backbone(weights, cache_dir)
    last_block = [layer for layer in network.layers if isinstance(layer, keras.layers.Add)][-1]
    pooled = keras.layers.GlobalAveragePooling2D()(last_block.output)
    return keras.Model(network.inputs, [pooled, network.output])


def _to_fer_input(images: tf.Tensor, fraction: float = 1.0) -> tf.Tensor:
    """[0, 1] (n, 256, 256, 3) -> what fer_transfer feeds its backbone, via the same layers."""
    x = models.CentralCrop(fraction)(images)
    x = keras.layers.Resizing(64, 64, interpolation="bilinear", antialias=True)(x)
    return models.Grayscale()(x) * 2.0 - 1.0


def _face_boxes(pixels: np.ndarray) -> np.ndarray:
    """(n, 4) [top, left, bottom, right] in [0, 1] of the largest face, or the whole image."""
    from pipeline.data import face_detection  # the in-graph MTCNN prototype

    detector = face_detection.FaceDetector()
    boxes = []
    for image in pixels:
        box, found = detector.largest_face_box(tf.constant(image), margin=FACE_MARGIN)
        boxes.append(box.numpy() if bool(found) else np.array([0.0, 0.0, 1.0, 1.0]))
    return np.array(boxes, dtype=np.float32)


def _views(pixels: np.ndarray, detect: bool) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
    views = {"full": lambda images, rows: _to_fer_input(images)}
    for fraction in CENTER_CROPS:
        views[f"crop{int(fraction * 100)}"] = lambda images, rows, f=fraction: _to_fer_input(
            images, f
        )
    if detect:
        boxes = _face_boxes(pixels)
        logger.info("faces found in %d of %d images", int((boxes[:, 2] < 1).sum()), len(boxes))

        def face(images, rows):
            crops = tf.image.crop_and_resize(
                images, boxes[rows], tf.range(len(rows)), [256, 256], method="bilinear"
            )
            return _to_fer_input(crops)

        views["face"] = face
    with_mirrors = {}
    for name, view in views.items():
        with_mirrors[name] = view
        with_mirrors[name + "_mirror"] = lambda images, rows, v=view: v(
            tf.reverse(images, axis=[2]), rows
        )
    return with_mirrors


def build_table(folder: str, cache_dir: str, weights: str, detect: bool) -> Table:
    """Loads the faces and the FER outputs of every view, from the cache when it is there."""
    os.makedirs(cache_dir, exist_ok=True)
    cache = os.path.join(cache_dir, f"table{'_faces' if detect else ''}.npz")
    if os.path.isfile(cache):
        stored = np.load(cache, allow_pickle=False)
        views = sorted({key.split(":", 1)[1] for key in stored.files if ":" in key})
        return Table(
            labels=stored["labels"],
            people=stored["people"],
            grayscale=stored["grayscale"],
            logits={view: stored[f"logits:{view}"] for view in views},
            features={view: stored[f"features:{view}"] for view in views},
        )
    faces = crossval.load_faces(folder)
    pixels = faces.pixels
    grayscale = np.all(pixels[..., :1] == pixels, axis=(1, 2, 3))
    network = _fer_models(weights, backbones.DEFAULT_CACHE_DIR)
    logits, features = {}, {}
    for name, view in _views(pixels, detect).items():
        started = time.time()
        outputs = [
            network(view(tf.constant(pixels[rows], tf.float32) / 255.0, rows), training=False)
            for rows in np.array_split(np.arange(len(pixels)), max(1, len(pixels) // 32))
        ]
        features[name] = np.concatenate([output[0].numpy() for output in outputs])
        logits[name] = np.concatenate([output[1].numpy() for output in outputs])
        logger.info("view %s: %.1f s", name, time.time() - started)
    arrays = {"labels": faces.labels, "people": faces.people, "grayscale": grayscale}
    arrays.update({f"logits:{name}": value for name, value in logits.items()})
    arrays.update({f"features:{name}": value for name, value in features.items()})
    np.savez(cache + ".tmp.npz", **arrays)
    os.replace(cache + ".tmp.npz", cache)
    return Table(faces.labels, faces.people, grayscale, logits, features)


# Candidates: fit on training rows (choosing whatever they choose inside), return logits.

Predictor = Callable[[np.ndarray], np.ndarray]  # rows -> logit(happy); >= 0 is "happy"


def _diff(table: Table, view: str) -> np.ndarray:
    """logit(happy) - logit(sad), averaged over the view and its mirror image."""
    both = [table.logits[name] for name in (view, view + "_mirror")]
    return np.mean([logits[:, HAPPY] - logits[:, SAD] for logits in both], axis=0)


def _mirror_mean(arrays: dict, view: str) -> np.ndarray:
    return (arrays[view] + arrays[view + "_mirror"]) / 2.0


def _weights(table: Table, rows: np.ndarray, person_weighted: bool) -> np.ndarray:
    """Sample weights: classes weigh alike; optionally every person weighs alike too."""
    labels = table.labels[rows]
    weights = np.ones(len(rows))
    if person_weighted:
        sizes = collections.Counter(table.people[rows])
        weights = 1.0 / np.array([sizes[name] for name in table.people[rows]], dtype=float)
    for label in (0, 1):
        chosen = labels == label
        if chosen.any():
            weights[chosen] *= 0.5 / weights[chosen].sum()
    return weights * len(rows)


def _inner_folds(table: Table, rows: np.ndarray, seed: int) -> list[tuple]:
    """Person-disjoint (fit, check) row pairs inside `rows`."""
    people = table.people[rows]
    folds = crossval.person_folds(
        table.labels[rows], people, min(INNER_FOLDS, len(set(people))), seed
    )
    return [(rows[folds != fold], rows[folds == fold]) for fold in range(int(folds.max()) + 1)]


def _fit_logistic(x, y, weights, l2_c, fixed_slope: bool = False):
    """An L2 logistic regression (standardised inputs); fixed_slope fits the intercept only."""
    if fixed_slope:  # logit = x + b: one bias, Newton steps on the weighted log-likelihood
        bias = 0.0
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-(x[:, 0] + bias)))
            gradient = np.sum(weights * (p - y))
            hessian = np.sum(weights * p * (1 - p)) + 1e-9
            bias -= gradient / hessian
        return lambda z: z[:, 0] + bias
    model = pipeline.make_pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(C=l2_c, max_iter=2000),
    )
    model.fit(x, y, logisticregression__sample_weight=weights)
    return model.decision_function


def _weighted_log_loss(y, logits, weights) -> float:
    probabilities = np.clip(1.0 / (1.0 + np.exp(-logits)), 1e-6, 1 - 1e-6)
    return float(metrics.log_loss(y, probabilities, sample_weight=weights, labels=[0, 1]))


@dataclasses.dataclass(frozen=True)
class Head:
    """A logistic head on one input: which features, which view, which weights."""

    inputs: str  # "bias" (happy-sad + bias), "platt" (a*(happy-sad) + b), "logits", "features"
    view: str = "full"
    person_weighted: bool = False

    def design(self, table: Table) -> np.ndarray:
        """(n, d) inputs of every image."""
        views = self.view.split("+")
        if self.inputs in ("bias", "platt"):
            return np.stack([_diff(table, view) for view in views], axis=1).mean(1, keepdims=True)
        source = table.logits if self.inputs == "logits" else table.features
        return np.concatenate([_mirror_mean(source, view) for view in views], axis=1)

    def fit(self, table: Table, rows: np.ndarray, l2_c: float) -> Predictor:
        x = self.design(table)
        weights = _weights(table, rows, self.person_weighted)
        predict = _fit_logistic(
            x[rows], table.labels[rows], weights, l2_c, fixed_slope=self.inputs == "bias"
        )
        return lambda test_rows: predict(x[test_rows])

    def grid(self) -> tuple[float, ...]:
        return (1.0,) if self.inputs == "bias" else L2_GRID


def _inner_score(table, rows, seed, fit: Callable) -> tuple[float, float]:
    """(accuracy, weighted log-loss) of `fit` over person-disjoint inner folds of `rows`."""
    logits, truth, weights = [], [], []
    for fit_rows, check_rows in _inner_folds(table, rows, seed):
        logits.append(fit(fit_rows)(check_rows))
        truth.append(table.labels[check_rows])
        weights.append(_weights(table, check_rows, False))
    logits, truth, weights = map(np.concatenate, (logits, truth, weights))
    accuracy = float(np.average((logits >= 0) == (truth == 1), weights=weights))
    return accuracy, _weighted_log_loss(truth, logits, weights)


def head_candidate(head: Head) -> Callable:
    """Fit with the L2 strength chosen by inner-fold log-loss (nested)."""

    def fit(table: Table, rows: np.ndarray, seed: int) -> tuple[Predictor, dict]:
        grid = head.grid()
        if len(grid) == 1:  # the bias alone: record it
            predictor = head.fit(table, rows, grid[0])
            bias = predictor(rows[:1])[0] - head.design(table)[rows[0], 0]
            return predictor, {"bias": round(float(bias), 1)}
        losses = [
            _inner_score(table, rows, seed, lambda r, c=c: head.fit(table, r, c))[1] for c in grid
        ]
        chosen = grid[int(np.argmin(losses))]
        return head.fit(table, rows, chosen), {"C": chosen}

    return fit


def _happy_vs_rest(table: Table, view: str) -> np.ndarray:
    """logit of P(happy) in the 7-way softmax, averaged over the view and its mirror image."""
    both = [table.logits[name] for name in (view, view + "_mirror")]
    rest = [np.delete(logits, HAPPY, axis=1) for logits in both]
    return np.mean(
        [
            logits[:, HAPPY] - np.log(np.exp(others).sum(axis=1))
            for logits, others in zip(both, rest, strict=True)
        ],
        axis=0,
    )


def zero_shot(view: str = "full", rule: str = "happy_minus_sad") -> Callable:
    """The FER network untrained: happy-minus-sad logit (or happy against all six others)."""

    def fit(table: Table, rows: np.ndarray, seed: int) -> tuple[Predictor, dict]:
        views = view.split("+")
        score = _diff if rule == "happy_minus_sad" else _happy_vs_rest
        values = np.mean([score(table, name) for name in views], axis=0)
        return (lambda test_rows: values[test_rows]), {}

    return fit


def selected(menu: dict[str, Callable]) -> Callable:
    """Chooses one of `menu` by inner person-disjoint accuracy (ties: log-loss), then refits."""

    def fit(table: Table, rows: np.ndarray, seed: int) -> tuple[Predictor, dict]:
        scores = {}
        for name, candidate in menu.items():
            accuracy, loss = _inner_score(
                table, rows, seed, lambda r, c=candidate: c(table, r, seed + 1)[0]
            )
            scores[name] = (round(accuracy, 3), -loss)
        chosen = max(scores, key=scores.get)
        predictor, choice = menu[chosen](table, rows, seed)
        return predictor, {"chosen": chosen, **choice}

    return fit


def averaged(members: dict[str, Callable]) -> Callable:
    """An ensemble: the mean of the members' logits."""

    def fit(table: Table, rows: np.ndarray, seed: int) -> tuple[Predictor, dict]:
        fitted = [candidate(table, rows, seed)[0] for candidate in members.values()]
        return (lambda test_rows: np.mean([f(test_rows) for f in fitted], axis=0)), {}

    return fit


def candidates(views: list[str]) -> dict[str, Callable]:
    """Every candidate recipe on cached FER outputs, by name."""
    found = {
        "fer_zero_shot": zero_shot(),
        "fer_bias": head_candidate(Head("bias")),
        "fer_bias_per_person": head_candidate(Head("bias", person_weighted=True)),
        "fer_platt": head_candidate(Head("platt")),
        "fer_logits_lr": head_candidate(Head("logits")),
        "fer_logits_lr_per_person": head_candidate(Head("logits", person_weighted=True)),
        "fer_features_lr": head_candidate(Head("features")),
        "fer_features_lr_per_person": head_candidate(Head("features", person_weighted=True)),
    }
    found["fer_zero_shot_happy_vs_rest"] = zero_shot(rule="happy_vs_rest")
    found["fer_zero_shot_views"] = zero_shot("+".join(views))
    for view in views:
        if view == "full":
            continue
        found[f"fer_zero_shot_{view}"] = zero_shot(view)
        found[f"fer_logits_lr_{view}"] = head_candidate(Head("logits", view))
        found[f"fer_logits_lr_full+{view}"] = head_candidate(Head("logits", f"full+{view}"))
    found["ensemble_zero_shot+logits_lr"] = averaged(
        {"zero": found["fer_zero_shot"], "lr": found["fer_logits_lr"]}
    )
    found["selected"] = selected(
        {
            name: found[name]
            for name in (
                "fer_zero_shot",
                "fer_zero_shot_happy_vs_rest",
                "fer_bias",
                "fer_bias_per_person",
                "fer_platt",
                "fer_logits_lr",
                "fer_logits_lr_per_person",
            )
        }
    )
    return found


# Evaluation.


def outer_predictions(table: Table, fit: Callable, seeds, folds: int) -> tuple[np.ndarray, list]:
    """(repeats, n) held-out logits, one row per fold seed; and what was chosen per fold."""
    logits = np.zeros((len(seeds), len(table.labels)))
    choices = []
    for repeat, seed in enumerate(seeds):
        assignment = crossval.person_folds(table.labels, table.people, folds, seed)
        for fold in range(folds):
            held_out = np.flatnonzero(assignment == fold)
            predictor, choice = fit(table, np.flatnonzero(assignment != fold), seed)
            logits[repeat, held_out] = predictor(held_out)
            choices.append(choice)
    return logits, choices


def _accuracies(correct: np.ndarray, grayscale: np.ndarray) -> tuple[float, float]:
    """(pooled, balanced) accuracy of per-image correctness in [0, 1]."""
    kinds = [correct[grayscale].mean(), correct[~grayscale].mean()]
    return float(correct.mean()), float(np.mean(kinds))


def person_bootstrap(table: Table, correct: dict, samples: int, seed: int = 0) -> dict:
    """Resampled (pooled, balanced) accuracies per candidate, people drawn within each kind.

    The same resamples for every candidate, so that differences can be read off pairwise.
    """
    generator = np.random.default_rng(seed)
    kind_people = {kind: np.unique(table.people[table.grayscale == kind]) for kind in (True, False)}
    rows_of = {name: np.flatnonzero(table.people == name) for name in np.unique(table.people)}
    draws = {name: [] for name in correct}
    for _ in range(samples):
        rows = {
            kind: np.concatenate([rows_of[p] for p in generator.choice(people, len(people))])
            for kind, people in kind_people.items()
        }
        for name, values in correct.items():
            kinds = [values[rows[True]].mean(), values[rows[False]].mean()]
            pooled = np.concatenate([values[rows[True]], values[rows[False]]]).mean()
            draws[name].append((pooled, np.mean(kinds)))
    return {name: np.array(values) for name, values in draws.items()}


def wilson(successes: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(centre - half), float(centre + half)


def summarise(table: Table, held_out: dict, choices: dict, seconds: dict, reference: str):
    """Rows of the results table, with person-bootstrap intervals and paired differences."""
    truth = table.labels == 1
    correct = {name: ((logits >= 0) == truth).mean(axis=0) for name, logits in held_out.items()}
    draws = person_bootstrap(table, correct, BOOTSTRAP_SAMPLES)
    rows = []
    for name, logits in held_out.items():
        pooled, balanced = _accuracies(correct[name], table.grayscale)
        aucs = [metrics.roc_auc_score(truth, repeat) for repeat in logits]
        low, high = np.percentile(draws[name], [2.5, 97.5], axis=0)
        difference = draws[name][:, 1] - draws[reference][:, 1]
        rows.append(
            {
                "candidate": name,
                "pooled_accuracy": pooled,
                "pooled_interval": [float(low[0]), float(high[0])],
                "pooled_wilson": wilson(correct[name].sum(), len(truth)),
                "balanced_accuracy": balanced,
                "balanced_interval": [float(low[1]), float(high[1])],
                "grayscale_accuracy": float(correct[name][table.grayscale].mean()),
                "colour_accuracy": float(correct[name][~table.grayscale].mean()),
                "sad_called_happy": float(1 - correct[name][~truth].mean()),
                "happy_called_sad": float(1 - correct[name][truth].mean()),
                "auc": float(np.mean(aucs)),
                f"balanced_minus_{reference}": float(np.mean(difference)),
                f"balanced_minus_{reference}_interval": [
                    float(v) for v in np.percentile(difference, [2.5, 97.5])
                ],
                "repeats": len(logits),
                "choices": dict(collections.Counter(json.dumps(c) for c in choices[name])),
                "seconds": round(seconds[name], 1),
            }
        )
    return rows


def keras_recipe_logits(folder: str, recipe: str, seeds, folds: int, table: Table) -> np.ndarray:
    """Held-out logits of a recipe trained end to end (as `happysad train`), per fold seed."""
    faces = crossval.load_faces(folder)
    if not np.array_equal(faces.labels, table.labels):
        raise ValueError("the cached table does not match the folder: clear --cache-dir")
    rows = []
    for seed in seeds:
        assignment = crossval.person_folds(faces.labels, faces.people, folds, seed)
        config = config_lib.replace(config_lib.recipe(recipe), seed=seed)
        probabilities = np.array(
            crossval.evaluate_recipe(faces, assignment, config)["probabilities"]
        )
        probabilities = np.clip(probabilities, 1e-7, 1 - 1e-7)
        rows.append(np.log(probabilities / (1 - probabilities)))
    return np.array(rows)


def print_table(rows: list[dict], reference: str) -> None:
    header = (
        f"{'candidate':<34} {'balanced [95% people]':<22} {'pooled [95% people]':<22} "
        f"{'gray':>5} {'colour':>6} {'AUC':>5} {'sad->h':>6} {'vs ' + reference:>22}"
    )
    print(header)
    for row in sorted(rows, key=lambda r: -r["balanced_accuracy"]):
        balanced = "{:.3f} [{:.2f}, {:.2f}]".format(
            row["balanced_accuracy"], *row["balanced_interval"]
        )
        pooled = "{:.3f} [{:.2f}, {:.2f}]".format(row["pooled_accuracy"], *row["pooled_interval"])
        delta = "{:+.3f} [{:+.2f}, {:+.2f}]".format(
            row[f"balanced_minus_{reference}"], *row[f"balanced_minus_{reference}_interval"]
        )
        print(
            f"{row['candidate']:<34} {balanced:<22} {pooled:<22} {row['grayscale_accuracy']:>5.3f} "
            f"{row['colour_accuracy']:>6.3f} {row['auc']:>5.3f} {row['sad_called_happy']:>6.3f} "
            f"{delta:>22}"
        )


NAME = "quality"
QUICK_CANDIDATES = ("fer_zero_shot", "fer_bias", "fer_logits_lr")
TARGET_ACCURACY = 0.85  # issue 15: the exported model's label on people it has never seen


def run(workdir: str, quick: bool) -> list:
    """run.py's entry: the candidates' balanced accuracy on ../shared/data/faces, as rows.

    Quick: QUICK_CANDIDATES (the FER network's heads, seconds each) over 2 fold seeds and
    the recommended recipe trained end to end over 1. Full: every head candidate over 5 fold
    seeds, and the recommended and seed recipes over 2. Without ../shared/data/faces, one row
    says it was not measured.
    """
    import common

    folder = common.shared_faces_dir()
    if folder is None:
        return [common.Row(NAME, "not measured: ../shared/data/faces is absent", 0, "")]
    folds, seeds = 5, list(range(2 if quick else 5))
    recipes, keras_seeds = (
        (["recommended"], seeds[:1]) if quick else (["recommended", "seed"], seeds[:2])
    )
    table = build_table(folder, os.path.join(workdir, "cache"), backbones.PRETRAINED, False)
    menu = candidates(sorted({name.removesuffix("_mirror") for name in table.logits}))
    if quick:
        menu = {name: menu[name] for name in QUICK_CANDIDATES}
    held_out, choices, seconds = {}, {}, {}
    for name, fit in menu.items():
        started = time.time()
        held_out[name], choices[name] = outer_predictions(table, fit, seeds, folds)
        seconds[name] = time.time() - started
    for recipe in recipes:
        started = time.time()
        held_out[recipe] = keras_recipe_logits(folder, recipe, keras_seeds, folds, table)
        choices[recipe], seconds[recipe] = [], time.time() - started
    rows = summarise(table, held_out, choices, seconds, reference="fer_zero_shot")
    print_table(rows, "fer_zero_shot")
    reference = next(row for row in rows if row["candidate"] == "fer_zero_shot")
    people = len(set(table.people))
    results = []
    for row in sorted(rows, key=lambda row: -row["balanced_accuracy"]):
        name = row["candidate"]
        repeats = len(keras_seeds) if name in recipes else len(seeds)
        low, high = row["balanced_interval"]
        kind = "recipe trained end to end" if name in recipes else "head on FER outputs"
        results.append(
            common.Row(
                NAME,
                f"{name} ({kind}): balanced accuracy on unseen people [95% person bootstrap "
                f"{low:.2f}-{high:.2f}], pooled {row['pooled_accuracy']:.3f}, AUC "
                f"{row['auc']:.3f}; {len(table.labels)} faces, {people} people, {folds} "
                f"person-disjoint folds x {repeats} seeds, nested",
                row["balanced_accuracy"],
                "",
                "fer_zero_shot",
                reference["balanced_accuracy"],
                f">= {TARGET_ACCURACY}" if name == "recommended" else "",
            )
        )
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="../shared/data/faces", help="happy/ and sad/ folder")
    parser.add_argument("--cache-dir", default="/tmp/happysad-bench-quality")
    parser.add_argument("--quick", action="store_true", help="2 fold seeds, fewer candidates")
    parser.add_argument("--seeds", type=int, default=5, help="outer fold seeds (repeats)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--detect-faces", action="store_true", help="add MTCNN face-crop views")
    parser.add_argument("--keras-recipes", nargs="*", default=[], help="e.g. recommended seed")
    parser.add_argument("--keras-seeds", type=int, default=None, help="repeats for those")
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    seeds = list(range(2 if arguments.quick else arguments.seeds))
    table = build_table(
        arguments.input, arguments.cache_dir, backbones.PRETRAINED, arguments.detect_faces
    )
    views = sorted({name.removesuffix("_mirror") for name in table.logits})
    menu = candidates(views)
    if arguments.quick:
        menu = {name: menu[name] for name in ("fer_zero_shot", "fer_bias", "fer_logits_lr")}
    if arguments.only:
        menu = {name: menu[name] for name in arguments.only}
    held_out, choices, seconds = {}, {}, {}
    for name, fit in menu.items():
        started = time.time()
        held_out[name], choices[name] = outer_predictions(table, fit, seeds, arguments.folds)
        seconds[name] = time.time() - started
        logger.info("%s: %.1f s", name, seconds[name])
    keras_seeds = seeds[: arguments.keras_seeds] if arguments.keras_seeds else seeds
    for recipe in arguments.keras_recipes:
        started = time.time()
        held_out[recipe] = keras_recipe_logits(
            arguments.input, recipe, keras_seeds, arguments.folds, table
        )
        choices[recipe], seconds[recipe] = [], time.time() - started
        logger.info("%s (Keras, %d repeats): %.1f s", recipe, len(keras_seeds), seconds[recipe])
    rows = summarise(table, held_out, choices, seconds, reference="fer_zero_shot")
    print(
        f"{len(table.labels)} images, {len(set(table.people))} people, {arguments.folds} "
        f"person-disjoint folds x {len(seeds)} fold seeds; nested choices; decision P>=0.5"
    )
    print_table(rows, "fer_zero_shot")
    if arguments.output:
        with open(arguments.output + ".tmp", "w", encoding="utf-8") as file:
            json.dump({"seeds": seeds, "folds": arguments.folds, "rows": rows}, file, indent=1)
        os.replace(arguments.output + ".tmp", arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
