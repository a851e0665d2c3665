"""Push a blessed SavedModel version into a serving base path that a model server may be polling.

TF Serving watches `<serving_base>/<version>/` and loads a version as soon as it sees it, so a
version must appear whole: on a local disk it is copied into a hidden `.<version>.tmp-*` folder
(ignored by the server, whose versions are integers) and renamed into place in one step; on
object stores (gs://, s3://, where there is no atomic rename) every file is copied first and
`saved_model.pb` last, because TF Serving takes that file as the sign that a version is
complete. An existing version number is never overwritten.
"""

import dataclasses
import logging
import os

import tensorflow as tf

from pipeline import artifacts, contract, errors

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PushArguments:
    """Which exported version `happysad push` pushes, where, and on what blessing."""

    model_dir: str  # an exported SavedModel version directory (e.g. export/3)
    serving_base: str  # the base path TF Serving polls (local, gs:// or s3://)
    # blessing.json written by `happysad evaluate`; default: the blessing that `happysad export
    # --evaluation-dir` put in the model card
    blessing: str | None = None
    force: bool = False  # push even if the model is not blessed (the reasons are logged)
    # version number in the serving base; default: one more than the highest there, so the
    # server's latest-version policy serves it. An existing number is refused, never overwritten
    version: int | None = None


def read_model_card(model_dir: str) -> dict:
    """The model card of an exported version ({} when it has none)."""
    path = os.path.join(model_dir, contract.MODEL_CARD_PATH)
    return artifacts.read_json(path) if tf.io.gfile.exists(path) else {}


def _read_blessing(model_dir: str, blessing: str | None, card: dict) -> tuple[dict | None, str]:
    if blessing:
        if not tf.io.gfile.exists(blessing):
            raise errors.UserError(f"blessing file {blessing} does not exist")
        return artifacts.read_json(blessing), blessing
    if "blessing" in card:
        return card["blessing"], os.path.join(model_dir, contract.MODEL_CARD_PATH)
    return None, ""


def refusal_reasons(blessing: dict | None, card: dict) -> list[str]:
    """Why a model must not be pushed; empty when it is blessed for this very model."""
    if blessing is None:
        return ["no blessing: run `happysad evaluate` and pass its blessing.json with --blessing"]
    reasons = []
    if not blessing.get("blessed"):
        reasons += blessing.get("reasons") or ["the evaluation did not bless the model"]
    blessed_model = blessing.get("model_sha256")
    exported_model = card.get("model_sha256")
    if blessed_model and exported_model and blessed_model != exported_model:
        reasons.append(
            f"the blessing is for another model (sha256 {blessed_model[:12]}…) than the one "
            f"exported here ({exported_model[:12]}…)"
        )
    return reasons


def run(
    *,
    model_dir: str,
    serving_base: str,
    blessing: str | None = None,
    force: bool = False,
    version: int | None = None,
) -> dict:
    """Pushes `model_dir` as a new version of `serving_base` if it is blessed.

    Returns:
        {"path", "version", "blessed", "forced", "reasons", "blessing"}.

    Raises:
        UserError: not a SavedModel, not blessed (without `force`), an existing version.
    """
    if not tf.io.gfile.exists(os.path.join(model_dir, contract.SAVED_MODEL_FILE)):
        raise errors.UserError(
            f"{model_dir} is not an exported SavedModel version (no {contract.SAVED_MODEL_FILE})"
        )
    card = read_model_card(model_dir)
    verdict, blessing_source = _read_blessing(model_dir, blessing, card)
    reasons = refusal_reasons(verdict, card)
    if reasons and not force:
        raise errors.UserError(
            "refusing to push an unblessed model (use --force to push anyway): "
            + "; ".join(reasons)
        )
    if reasons:
        logger.warning("pushing an unblessed model because of --force: %s", "; ".join(reasons))
    path = artifacts.publish(model_dir, serving_base, version)
    return {
        "path": path,
        "version": int(os.path.basename(path.rstrip("/"))),
        "blessed": not reasons,
        "forced": bool(reasons),
        "reasons": reasons,
        "blessing": blessing_source,
    }
