"""`happysad run`: every stage in order into one work directory, TFX-style.

W/preprocess  Beam validation report of the input (or of the synthetic faces)
W/build       the TFDS dataset (data_dir W/build/tensorflow_datasets)
W/train       the Keras model, checkpoints, TensorBoard logs, curves
W/evaluate    metrics, plots and the blessing, against the model already pushed
W/export      the SavedModel version with its model card and lineage
W/push        the record of the push into W/serving/<model_name>/<version>/

Each stage writes W/<stage>/record.json; a rerun skips the stages whose inputs and parameters
are unchanged, and `--force` reruns them all.
"""

import dataclasses
import json
import logging
import os

from pipeline import errors, stage_records
from pipeline.data import imaging

logger = logging.getLogger(__name__)

SERVING_DIR = "serving"
LINEAGE_FILE = "lineage.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(imaging.CleaningOptions):
    """`happysad run`: where to work, what data, which recipe (cleaning options inherited)."""

    workdir: str = dataclasses.field(metadata={"help": "work directory for every stage's output"})
    input: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "folder (or gs://, s3:// URI) holding happy/ and sad/ sub-folders; "
            "omit it for the built-in synthetic faces"
        },
    )
    recipe: str = dataclasses.field(
        default="recommended",
        metadata={"help": "training recipe (see `happysad train --help`): recommended, seed, ..."},
    )
    num_images: int | None = dataclasses.field(
        default=None,
        metadata={"help": "without --input: how many synthetic faces to render (default: 2000)"},
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "seed of the synthetic faces and of training"}
    )
    epochs: int | None = dataclasses.field(
        default=None, metadata={"help": "override the recipe's number of epochs"}
    )
    batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "override the recipe's batch size"}
    )
    backbone_weights: str | None = dataclasses.field(
        default=None,
        metadata={"help": "override the recipe's backbone weights (a local file, or 'random')"},
    )
    min_accuracy: float = dataclasses.field(
        default=0.6, metadata={"help": "lowest test accuracy that is blessed and pushed"}
    )
    model_name: str = dataclasses.field(
        default="happysad", metadata={"help": "model name: W/serving/<model_name>/<version>/"}
    )
    force: bool = dataclasses.field(
        default=False, metadata={"help": "rerun every stage even when its record matches"}
    )
    beam_args: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "Beam pipeline options", "passthrough": True}
    )


def serving_base(config: RunConfig) -> str:
    """Where pushed versions go: the model base path for `happysad serve` or TF Serving."""
    return os.path.join(config.workdir, SERVING_DIR, config.model_name)


def _cleaning_options(config: RunConfig) -> dict:
    return dataclasses.asdict(imaging.options_from(config))


def _check_input(config: RunConfig) -> None:
    if config.input is None:
        return
    if "://" not in config.input and not os.path.isdir(config.input):
        raise errors.UserError(
            f"input folder {config.input} does not exist: give a folder with happy/ and sad/ "
            "sub-folders of images"
        )


def _preprocess(runner: stage_records.StageRunner, config: RunConfig) -> dict:
    from pipeline.data import preprocess

    parameters = {
        "options": _cleaning_options(config),
        "source": config.input or {"synthetic": config.num_images, "seed": config.seed},
    }
    inputs = {"images": config.input} if config.input else {}

    def execute(stage_dir: str) -> dict:
        synthetic = {} if config.num_images is None else {"num_synthetic": config.num_images}
        summary = preprocess.run(
            preprocess.PreprocessConfig(
                **_cleaning_options(config),
                input=config.input,
                output=stage_dir,
                seed=config.seed,
                beam_args=config.beam_args,
                **synthetic,
            )
        )
        return {key: summary[key] for key in ("input_files", "status", "warnings", "outputs")}

    return runner.run("preprocess", parameters, inputs, execute)


def _build(runner: stage_records.StageRunner, config: RunConfig) -> dict:
    from pipeline.data import build

    source = "folder" if config.input else "synthetic"
    parameters = {
        "config": source,
        "options": _cleaning_options(config),
        "num_images": config.num_images,
        "seed": config.seed,
    }
    inputs = {"images": config.input} if config.input else {}

    def execute(stage_dir: str) -> dict:
        return build.run(
            build.BuildConfig(
                **_cleaning_options(config),
                config=source,
                data_dir=os.path.join(stage_dir, "tensorflow_datasets"),
                manual_dir=config.input,
                num_images=config.num_images if source == "synthetic" else None,
                seed=config.seed,
                beam_args=config.beam_args,
            )
        )

    return runner.run("build", parameters, inputs, execute, required=["dataset_dir"])


def _dataset_name(dataset: dict) -> str:
    return f"{dataset['name']}/{dataset['config']}:{dataset['version']}"


def _train(runner: stage_records.StageRunner, config: RunConfig, dataset: dict) -> dict:
    from pipeline.train import recipes
    from pipeline.train import trainer as train

    overrides = {
        name: value
        for name, value in (
            ("epochs", config.epochs),
            ("batch_size", config.batch_size),
            ("backbone_weights", config.backbone_weights),
        )
        if value is not None
    }
    stage_dir = runner.stage_dir("train")
    train_config = recipes.train_config(
        config.recipe,
        output_dir=stage_dir,
        dataset=_dataset_name(dataset),
        data_dir=dataset["data_dir"],
        seed=config.seed,
        **overrides,
    )
    parameters = {
        key: value
        for key, value in dataclasses.asdict(train_config).items()
        if key not in ("output_dir", "data_dir")
    }

    def execute(output_dir: str) -> dict:
        # Not cleared before a rerun: an interrupted training resumes from its checkpoints.
        return train.run(train_config)

    return runner.run(
        "train",
        parameters,
        {"dataset": dataset["dataset_dir"]},
        execute,
        clear_output=False,
        required=["model"],
    )


def _evaluate(
    runner: stage_records.StageRunner, config: RunConfig, dataset: dict, trained: dict
) -> dict:
    from pipeline.export import evaluate

    # The baseline (the version pushed before) is a parameter, not a hashed input: pushing this
    # run's own model must not invalidate this run's evaluation.
    parameters = {"min_accuracy": config.min_accuracy, "baseline": serving_base(config)}

    def execute(stage_dir: str) -> dict:
        return evaluate.run(
            evaluate.EvaluateConfig(
                model_path=runner.stage_dir("train"),
                output_dir=stage_dir,
                dataset=_dataset_name(dataset),
                data_dir=dataset["data_dir"],
                baseline=serving_base(config),
                min_accuracy=config.min_accuracy,
            )
        )

    inputs = {"model": trained["model"], "dataset": dataset["dataset_dir"]}
    return runner.run("evaluate", parameters, inputs, execute)


def _lineage(runner: stage_records.StageRunner, config: RunConfig) -> dict:
    """What made the model: every earlier stage's record, as written in W/<stage>/."""
    lineage = {"workdir": os.path.abspath(config.workdir), "recipe": config.recipe}
    for stage in ("preprocess", "build", "train", "evaluate"):
        record = stage_records.read_record(runner.stage_dir(stage))
        lineage[stage] = dataclasses.asdict(record) if record else None
    return lineage


def _export(runner: stage_records.StageRunner, config: RunConfig, trained: dict) -> dict:
    from pipeline.export import saved_model as export

    def execute(stage_dir: str) -> dict:
        lineage_path = os.path.join(stage_dir, LINEAGE_FILE)
        with open(lineage_path, "w", encoding="utf-8") as handle:
            json.dump(_lineage(runner, config), handle, indent=2, default=str)
        return export.run(
            export.ExportConfig(
                model_path=runner.stage_dir("train"),
                export_base=os.path.join(stage_dir, config.model_name),
                version=1,
                evaluation_dir=runner.stage_dir("evaluate"),
                lineage=lineage_path,
            )
        )

    inputs = {"model": trained["model"], "evaluation": runner.stage_dir("evaluate")}
    return runner.run("export", {"model_name": config.model_name}, inputs, execute)


def _push(runner: stage_records.StageRunner, config: RunConfig, exported: dict) -> dict:
    from pipeline.export import push

    def execute(stage_dir: str) -> dict:
        return push.run(
            push.PushConfig(model_dir=exported["path"], serving_base=serving_base(config))
        )

    return runner.run(
        "push",
        {"serving_base": serving_base(config)},
        {"model": exported["path"]},
        execute,
        required=["path"],
    )


def run(config: RunConfig) -> dict:
    """Runs preprocess → build → train → evaluate → export → push; returns what each made."""
    _check_input(config)
    os.makedirs(config.workdir, exist_ok=True)
    runner = stage_records.StageRunner(config.workdir, force=config.force)
    summary = {"preprocess": _preprocess(runner, config)}
    summary["build"] = _build(runner, config)
    summary["train"] = _train(runner, config, summary["build"])
    summary["evaluate"] = _evaluate(runner, config, summary["build"], summary["train"])
    summary["export"] = _export(runner, config, summary["train"])
    if not summary["evaluate"]["blessed"]:
        reasons = "; ".join(summary["evaluate"]["reasons"]) or "see W/evaluate/blessing.json"
        raise errors.UserError(
            f"the model was not blessed, so it was not pushed ({reasons}); the exported "
            f"candidate is in {summary['export']['path']}"
        )
    summary["push"] = _push(runner, config, summary["export"])
    logger.info("Model pushed to %s", summary["push"]["path"])
    logger.info(
        "Serve it: happysad serve --model_name %s --model_base_path %s",
        config.model_name,
        serving_base(config),
    )
    return summary
