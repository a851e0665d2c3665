"""Cross-validated accuracy of training recipes on a small happy/ sad/ folder of real faces.

`python -m pipeline.train.crossval --input ../shared/data/faces` estimates how a recipe
generalises to faces of people it has never seen: folds keep each person (the file name
without its trailing _NNNN) on one side, and every image goes through THE transform
(pipeline.data.transform) before the model, as a photo sent to the exported
`serving_default` would. Each fold trains exactly as `happysad train` does (`train.fit` with
the recipe's schedule), holding out a tenth of its training images for validation by content
hash, as the `folder` dataset does.
"""

import collections
import dataclasses
import hashlib
import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import artifacts, contract, errors
from pipeline import config as config_lib
from pipeline.data import splits, transform
from pipeline.train import input_pipeline as data
from pipeline.train import models, trainer

# Within a training fold: 90% train, 10% validation, by content hash (as splits does).
_INNER_FRACTIONS = (0.9, 0.1, 0.0)
ZERO_SHOT = "fer_zero_shot"  # the FER-2013 network untrained, as a reference row

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CrossvalArguments:
    """What to cross-validate, on which folder."""

    input: str  # folder with happy/ and sad/ images
    # recipes to compare; 'fer_zero_shot' adds the untrained FER network
    recipes: tuple[str, ...] = (config_lib.DEFAULT_RECIPE,)
    folds: int = 5  # number of person-disjoint folds
    seed: int = 42  # seed of the folds and of training
    epochs: int = 0  # override every recipe's number of epochs (0: the recipe's)
    backbone_weights: str = ""  # override the recipes' backbone weights (a local file)
    output: str = ""  # write the results as JSON here


@dataclasses.dataclass(frozen=True)
class Faces:
    """A labelled folder, preprocessed as serving does."""

    pixels: np.ndarray  # uint8 (n, 256, 256, 3)
    labels: np.ndarray  # int64 (n,), 0 sad, 1 happy
    people: np.ndarray  # str (n,)
    sha256: np.ndarray  # str (n,), of the file's bytes


def person(file_name: str) -> str:
    """The person a photo shows, from LFW-style names: "Tony_Blair_0003.jpg" -> "Tony_Blair"."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    name, _, number = stem.rpartition("_")
    return name if name and number.isdigit() else stem


def load_faces(
    folder: str, options: config_lib.TransformConfig = transform.DEFAULT_OPTIONS
) -> Faces:
    """Reads happy/ and sad/ and turns every file into pixels with THE transform.

    The pixels are those the data job would store and the served model would compute for the
    same bytes; files the transform refuses are left out (with a warning), as the data job
    leaves them out.

    Raises:
        UserError: a missing happy/ or sad/ folder, or a label without a usable image.
    """
    records = []
    for label in contract.LABELS:
        directory = os.path.join(folder, label)
        if not os.path.isdir(directory):
            raise errors.UserError(f"{folder} has no {label}/ folder")
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as file:
                records.append((file.read(), contract.label_id(label), person(name), name))
    results = transform.Transformer(options).many([record[0] for record in records])
    kept = []
    for record, result in zip(records, results, strict=True):
        if result.pixels is None:
            logger.warning("left out %s: %s (%s)", record[3], result.reason, result.detail)
        else:
            kept.append((result.pixels, *record))
    if len({record[2] for record in kept}) < 2:
        raise errors.UserError(f"{folder} needs usable images in both happy/ and sad/")
    return Faces(
        pixels=np.stack([record[0] for record in kept]),
        labels=np.array([record[2] for record in kept], dtype=np.int64),
        people=np.array([record[3] for record in kept]),
        sha256=np.array([hashlib.sha256(record[1]).hexdigest() for record in kept]),
    )


def person_folds(labels: np.ndarray, people: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per image; a person's images share a fold.

    People are dealt largest first, each to the fold with the fewest images so far (ties by a
    seeded shuffle), so the folds are as even as the people allow.
    """
    if folds < 2:
        raise errors.UserError(f"need at least 2 folds, got {folds}")
    names = sorted(set(people))
    if len(names) < folds:
        raise errors.UserError(f"{len(names)} people cannot fill {folds} folds")
    np.random.default_rng(seed).shuffle(names)
    sizes = collections.Counter(people)
    names.sort(key=lambda name: -sizes[name])  # stable: equal sizes keep the shuffled order
    assignment = np.zeros(len(labels), dtype=np.int64)
    totals = np.zeros(folds, dtype=np.int64)
    for name in names:
        fold = int(np.argmin(totals))
        assignment[people == name] = fold
        totals[fold] += sizes[name]
    return assignment


def _batches(pixels, labels, batch_size, *, shuffle=False, seed=None) -> tf.data.Dataset:
    """The same transforms as data.load_split, from arrays instead of TFDS."""
    pairs = tf.data.Dataset.from_tensor_slices((pixels, labels)).cache()
    if shuffle:
        pairs = pairs.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    batches = pairs.batch(batch_size).map(
        lambda images, batch_labels: (data.scale_images(images), batch_labels),
        num_parallel_calls=data.AUTOTUNE,
    )
    return batches.prefetch(data.AUTOTUNE)


def _predict(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    return model.predict(_batches(pixels, np.zeros(len(pixels)), 64), verbose=0)[:, 0]


def _recipe_config(arguments: CrossvalArguments, recipe: str) -> config_lib.Config:
    name = config_lib.DEFAULT_RECIPE if recipe == ZERO_SHOT else recipe
    config = config_lib.replace(config_lib.recipe(name), seed=arguments.seed)
    if arguments.epochs:
        config = config_lib.replace(config, **{"train.epochs": arguments.epochs})
    if arguments.backbone_weights:
        config = config_lib.replace(
            config, **{"train.model.backbone_weights": arguments.backbone_weights}
        )
    if recipe == ZERO_SHOT:
        config = config_lib.replace(
            config,
            recipe=ZERO_SHOT,
            **{"train.model.center_crop": 1.0, "train.model.flip_average": False},
        )
    return config


def _train_fold(faces: Faces, train_rows: np.ndarray, config: config_lib.Config) -> keras.Model:
    """Trains on one fold's training rows as `happysad train` would, validation included."""
    inner = np.array([splits.assign_split(sha, _INNER_FRACTIONS) for sha in faces.sha256])
    fit_rows = train_rows & (inner != "validation")
    validation_rows = train_rows & (inner == "validation")
    counts = dict(collections.Counter(faces.labels[fit_rows].tolist()))
    train, class_weight = trainer.plan(config.train, counts)
    model = models.build_model(train, seed=config.seed)
    validation = (
        _batches(faces.pixels[validation_rows], faces.labels[validation_rows], train.batch_size)
        if validation_rows.any()
        else None
    )
    best = _KeepBest() if train.keep_best and validation is not None else None
    trainer.fit(
        model,
        train,
        _batches(
            faces.pixels[fit_rows],
            faces.labels[fit_rows],
            train.batch_size,
            shuffle=True,
            seed=config.seed,
        ),
        validation,
        callbacks=[best] if best else [],
        class_weight=class_weight,
        verbose=0,
    )
    if best and best.weights is not None:
        model.set_weights(best.weights)
    return model


class _KeepBest(keras.callbacks.Callback):
    """In memory, what train's checkpoints do on disk: the weights of the lowest val_loss."""

    def __init__(self):
        super().__init__()
        self.best, self.weights = None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and (self.best is None or value < self.best):
            self.best, self.weights = value, self.model.get_weights()


def evaluate_recipe(faces: Faces, folds: np.ndarray, config: config_lib.Config) -> dict:
    """Held-out accuracy of every fold, pooled accuracy and mean +- std over folds.

    The result also holds `probabilities`: every image's held-out P(happy), in `faces` order,
    so that a caller can pool repeats or bootstrap over people.
    """
    probabilities = np.zeros(len(faces.labels))
    started = time.time()
    for fold in range(int(folds.max()) + 1):
        held_out = folds == fold
        keras.utils.set_random_seed(config.seed + fold)
        if config.recipe == ZERO_SHOT:
            model = models.build_model(config.train)
        else:
            model = _train_fold(faces, ~held_out, config)
        probabilities[held_out] = _predict(model, faces.pixels[held_out])
        logger.info("%s: fold %d done (%.0f s)", config.recipe, fold, time.time() - started)
        keras.backend.clear_session()
    correct = (probabilities >= 0.5) == (faces.labels == 1)
    per_fold = [float(correct[folds == fold].mean()) for fold in range(int(folds.max()) + 1)]
    return {
        "recipe": config.recipe,
        "pooled_accuracy": float(correct.mean()),
        "fold_accuracy_mean": float(np.mean(per_fold)),
        "fold_accuracy_std": float(np.std(per_fold)),
        "fold_accuracies": per_fold,
        "fold_sizes": [int((folds == fold).sum()) for fold in range(len(per_fold))],
        "probabilities": [float(value) for value in probabilities],
        "seconds": round(time.time() - started, 1),
        "config": config_lib.to_dict(config),
    }


def run(arguments: CrossvalArguments) -> dict:
    """Cross-validates every recipe on the same folds; returns (and optionally writes) results."""
    faces = load_faces(arguments.input)
    folds = person_folds(faces.labels, faces.people, arguments.folds, arguments.seed)
    results = {
        "input": os.path.abspath(arguments.input),
        "images": len(faces.labels),
        "people": len(set(faces.people)),
        "folds": arguments.folds,
        "seed": arguments.seed,
        "results": [],
    }
    for recipe in arguments.recipes:
        config = _recipe_config(arguments, recipe)
        results["results"].append(evaluate_recipe(faces, folds, config))
        if arguments.output:  # after every recipe: a long comparison shows what it has so far
            artifacts.write_json(arguments.output, results)
    return results


def main(argv=None) -> int:
    """`python -m pipeline.train.crossval --input FOLDER [--recipes recommended seed ...]`."""
    import simple_parsing

    parser = simple_parsing.ArgumentParser(
        prog="python -m pipeline.train.crossval",
        description=__doc__,
        add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
        add_config_path_arg=False,
    )
    parser.add_arguments(CrossvalArguments, dest="arguments")
    arguments = parser.parse_args(argv).arguments
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        results = run(arguments)
    except (errors.UserError, ValueError) as error:
        print(f"crossval: error: {error}", file=sys.stderr)
        return 2
    for row in results["results"]:
        print(
            f"{row['recipe']:<16} accuracy {row['pooled_accuracy']:.3f} pooled, "
            f"{row['fold_accuracy_mean']:.3f} +- {row['fold_accuracy_std']:.3f} over "
            f"{results['folds']} person-disjoint folds ({row['seconds']:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
