"""`happysad run`: every stage in order into one work directory, TFX-style.

W/build       the data job and the TFDS dataset (data_dir W/build/tensorflow_datasets); its
              manifest.csv, summary.json and report.md lie beside the dataset version
W/train       the Keras model, checkpoints, TensorBoard logs, curves
W/evaluate    metrics, plots and the blessing, against the model already pushed
W/export      the SavedModel version with its model card and lineage
W/push        the record of the push into W/serving/<model_name>/<version>/

Each stage writes W/<stage>/record.json; a rerun skips the stages whose inputs, parameters and
code are unchanged, and `--force` reruns them all. Like TFX's components, each stage runs in
a child process: a stage that dies (a crash in native code, the kernel's OOM killer) is
reported as one line naming the stage and the signal, and leaves no record, so the same
command resumes where it stopped (a training run after its last completed epoch).
"""

import dataclasses
import logging
import os

from pipeline import artifacts, child_process, errors, stage_records
from pipeline import config as config_lib

SERVING_DIR = "serving"
LINEAGE_FILE = "lineage.json"
STAGES = ("build", "train", "evaluate", "export", "push")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunArguments:
    """Where `happysad run` works (the data, recipe and bar are the configuration's)."""

    workdir: str  # work directory for every stage's output
    force: bool = False  # rerun every stage even when its record matches


def serving_base(config: config_lib.Config, workdir: str) -> str:
    """Where pushed versions go: the model base path for `happysad serve` or TF Serving."""
    return os.path.join(workdir, SERVING_DIR, config.export.model_name)


def _build(runner, config: config_lib.Config, beam_args: tuple[str, ...]) -> dict:
    data = config.data
    parameters = {"data": config_lib.to_dict(data), "seed": config.seed}
    inputs = {"images": data.input} if data.input else {}

    def execute(stage_dir: str) -> dict:
        return child_process.run(
            "build",
            "pipeline.data.build:run",
            config,
            data_dir=os.path.join(stage_dir, "tensorflow_datasets"),
            beam_args=beam_args,
        )

    return runner.run("build", parameters, inputs, execute, required=["dataset_dir"])


def _dataset_name(dataset: dict) -> str:
    return f"{dataset['name']}/{dataset['config']}:{dataset['version']}"


def _train(runner, config: config_lib.Config, dataset: dict) -> dict:
    parameters = {"train": config_lib.to_dict(config.train), "seed": config.seed}

    def execute(stage_dir: str) -> dict:
        # Not cleared before a rerun: an interrupted training resumes from its checkpoints.
        return child_process.run(
            "train",
            "pipeline.train.trainer:run",
            config,
            output_dir=stage_dir,
            dataset=_dataset_name(dataset),
            data_dir=dataset["data_dir"],
        )

    return runner.run(
        "train",
        parameters,
        {"dataset": dataset["dataset_dir"]},
        execute,
        clear_output=False,
        required=["model"],
    )


def _evaluate(runner, config: config_lib.Config, workdir: str, dataset: dict, trained: dict):
    # The baseline (the version pushed before) is a parameter, not a hashed input: pushing this
    # run's own model must not invalidate this run's evaluation.
    baseline = serving_base(config, workdir)
    parameters = {"evaluate": config_lib.to_dict(config.evaluate), "baseline": baseline}

    def execute(stage_dir: str) -> dict:
        return child_process.run(
            "evaluate",
            "pipeline.export.evaluate:run",
            config,
            model_path=runner.stage_dir("train"),
            output_dir=stage_dir,
            dataset=_dataset_name(dataset),
            data_dir=dataset["data_dir"],
            baseline=baseline,
        )

    inputs = {"model": trained["model"], "dataset": dataset["dataset_dir"]}
    return runner.run("evaluate", parameters, inputs, execute)


def _lineage(runner, config: config_lib.Config, workdir: str) -> dict:
    """What made the model: every earlier stage's record, as written in W/<stage>/."""
    lineage = {"workdir": os.path.abspath(workdir), "recipe": config.recipe}
    for stage in ("build", "train", "evaluate"):
        record = stage_records.read_record(runner.stage_dir(stage))
        lineage[stage] = dataclasses.asdict(record) if record else None
    return lineage


def _export(runner, config: config_lib.Config, workdir: str, trained: dict) -> dict:
    def execute(stage_dir: str) -> dict:
        lineage_path = os.path.join(stage_dir, LINEAGE_FILE)
        artifacts.write_json(lineage_path, _lineage(runner, config, workdir))
        return child_process.run(
            "export",
            "pipeline.export.saved_model:run",
            config,
            model_path=runner.stage_dir("train"),
            export_base=os.path.join(stage_dir, config.export.model_name),
            version=1,
            evaluation_dir=runner.stage_dir("evaluate"),
            lineage=lineage_path,
        )

    inputs = {"model": trained["model"], "evaluation": runner.stage_dir("evaluate")}
    parameters = {"export": config_lib.to_dict(config.export)}
    return runner.run("export", parameters, inputs, execute)


def _push(runner, config: config_lib.Config, workdir: str, exported: dict) -> dict:
    base = serving_base(config, workdir)

    def execute(stage_dir: str) -> dict:
        from pipeline.export import push

        return push.run(model_dir=exported["path"], serving_base=base)

    return runner.run(
        "push", {"serving_base": base}, {"model": exported["path"]}, execute, required=["path"]
    )


def run(
    config: config_lib.Config,
    *,
    workdir: str,
    force: bool = False,
    beam_args: tuple[str, ...] = (),
) -> dict:
    """Runs build → train → evaluate → export → push into `workdir`; returns what each made.

    Raises:
        UserError: bad input, a model that is not blessed (exported, not pushed), or a stage
            that died (child_process.StageDied).
    """
    if config.data.input is not None:
        from pipeline.data import sources

        sources.check_root(config.data.input)
    os.makedirs(workdir, exist_ok=True)
    runner = stage_records.StageRunner(workdir, force=force)
    summary = {"build": _build(runner, config, beam_args)}
    summary["train"] = _train(runner, config, summary["build"])
    summary["evaluate"] = _evaluate(runner, config, workdir, summary["build"], summary["train"])
    summary["export"] = _export(runner, config, workdir, summary["train"])
    if not summary["evaluate"]["blessed"]:
        reasons = "; ".join(summary["evaluate"]["reasons"]) or "see W/evaluate/blessing.json"
        raise errors.UserError(
            f"the model was not blessed, so it was not pushed ({reasons}); the exported "
            f"candidate is in {summary['export']['path']}"
        )
    summary["push"] = _push(runner, config, workdir, summary["export"])
    logger.info("Data report: %s", summary["build"]["report"])
    logger.info("Model pushed to %s", summary["push"]["path"])
    logger.info(
        "Serve it: happysad serve --model_name=%s --model_base_path=%s",
        config.export.model_name,
        os.path.abspath(serving_base(config, workdir)),
    )
    return summary
