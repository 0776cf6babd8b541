"""RetrievalEvaluator's executor: loads the raw splits and the model, scores, blesses."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from animerec import evaluation as m
from animerec import features as f
from animerec.config import parse_config
from animerec.data import files, interactions
from animerec.ids import catalog_positions
from animerec.pipeline.artifacts import (
    CURVES_FILE,
    METRICS_FILE,
    RECALL_PLOT,
    REPORT_FILE,
    VERDICT_FILE,
    newest_version_dir,
)
from animerec.report import evaluation_markdown, plot_recall

RECALL_CURVE_KS = (5, 10, 20, 30, 50, 75, 100)
MAX_EVAL_USERS = 20000


def _read_split(examples: types.Artifact, split: str) -> dict[str, np.ndarray]:
    from animerec.model.data import read_examples

    pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
    spec = {name: tf.io.FixedLenFeature([1], tf.int64) for name in (f.USER_ID, f.ANIME_ID, f.LIKED)}
    return {k: v.reshape(-1) for k, v in read_examples(pattern, spec).items()}


def load_tasks(
    examples: types.Artifact, max_users: int = MAX_EVAL_USERS, validation_percent: int = interactions.VALIDATION_PERCENT
) -> tuple[m.EvalData, m.EvalData, np.ndarray]:
    """The eval task (train rows -> eval split), the validation task carved out of train
    (validation_percent of each eligible user's liked rows), and the sorted catalog ids."""
    catalog_ids = np.sort(_read_split(examples, f.CATALOG_SPLIT)[f.ANIME_ID])
    train = _read_split(examples, f.TRAIN_SPLIT)
    interaction = train[f.USER_ID] != f.NO_USER
    user, anime = train[f.USER_ID][interaction], train[f.ANIME_ID][interaction]
    position = catalog_positions(catalog_ids, anime)
    liked = train[f.LIKED][interaction] == 1
    eval_ = _read_split(examples, f.EVAL_SPLIT)
    data = m.EvalData(
        len(catalog_ids),
        user[liked],
        position[liked],
        user,
        position,
        eval_[f.USER_ID],
        catalog_positions(catalog_ids, eval_[f.ANIME_ID]),
        max_users=max_users,
    )
    validation = m.validation_task(user, anime, position, liked, len(catalog_ids), percent=validation_percent)
    return data, validation, catalog_ids


def trained_validation_percent(model_dir: str) -> int:
    """The validation carve (percent of liked training rows) of the Trainer that built the
    model, from the TrainingConfig it shipped (features.TRAINING_CONFIG_FILE), so that EASE
    is tuned on the rows the model's own choices were made on. The default carve when the
    model ships none (an older model) or carved none (validation_percent 0, or 100 and
    over): EASE is never tuned on the eval split."""
    path = os.path.join(model_dir, f.TRAINING_CONFIG_FILE)
    if not files.exists(path):
        logging.warning(
            "RetrievalEvaluator: %s not found; EASE's L2 is chosen on the default %d%% validation carve",
            path,
            interactions.VALIDATION_PERCENT,
        )
        return interactions.VALIDATION_PERCENT
    try:
        percent = json.loads(files.read_text(path))["validation_percent"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a TrainingConfig with a validation_percent") from None
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise ValueError(f"{path}: validation_percent must be an integer; got {json.dumps(percent)}")
    if not 0 < percent < 100:  # 0 or less holds out nothing, 100 or more every row (no user keeps any)
        logging.warning(
            "RetrievalEvaluator: the Trainer carved no validation split (validation_percent %d); EASE's L2 is "
            "chosen on the default %d%% carve",
            percent,
            interactions.VALIDATION_PERCENT,
        )
        return interactions.VALIDATION_PERCENT
    return percent


def rank_model(
    model_dir: str, data: m.EvalData, catalog_ids: np.ndarray, k: int, signature: str = f.EVAL_SIGNATURE
) -> np.ndarray:
    """Top k catalog positions from one of the SavedModel's eval signatures (training titles excluded)."""
    loaded = tf.saved_model.load(model_dir)
    recommend = loaded.signatures[signature]
    ranked = []
    for start in range(0, len(data.users), m.SCORE_BATCH):
        users = data.users[start : start + m.SCORE_BATCH]
        out = recommend(
            user_id=tf.constant(users, tf.int64),
            k=tf.fill([len(users)], k),
            exclude_anime_ids=tf.fill([len(users), 1], tf.constant(-1, tf.int64)),
        )
        ranked.append(catalog_positions(catalog_ids, out[f.OUTPUT_ANIME_IDS].numpy()[:, :k]))
    return np.concatenate(ranked) if ranked else np.zeros((0, k), np.int64)


def same_saved_model(a: str, b: str) -> bool:
    """Whether two SavedModel folders hold the same model: the same graph and the same
    variables index (which records each variable's shape, offset and checksum), as a copy
    by Pusher keeps them."""
    names = ("saved_model.pb", os.path.join("variables", "variables.index"))
    try:
        return all(files.read_bytes(os.path.join(a, n)) == files.read_bytes(os.path.join(b, n)) for n in names)
    except (OSError, tf.errors.NotFoundError):
        return False


def evaluate(examples: types.Artifact, model_dir: str, baseline_model_dir: str | None) -> tuple[dict, dict]:
    """Metrics, slices and recall curves for the model (two stages, and retrieval alone),
    the baselines (EASE with its L2 chosen on validation) and the model being served
    (`baseline_model_dir`, when there is one)."""
    percent = trained_validation_percent(model_dir)
    data, validation, catalog_ids = load_tasks(examples, validation_percent=percent)
    k = min(max(m.KS), data.catalog_size)
    start = time.time()
    l2, l2_scores = m.tune_ease_l2(validation)
    logging.info(
        "RetrievalEvaluator: EASE L2 %s chosen on the %d%% validation carve (recall@50 %s)", l2, percent, l2_scores
    )
    ease_seconds = time.time() - start

    def rank_ease():
        return m.EaseIndex.of(data).rank_each(data, [l2], k)[l2]

    rankers = {
        "model": lambda: rank_model(model_dir, data, catalog_ids, k),
        "retrieval only": lambda: rank_model(model_dir, data, catalog_ids, k, f.EVAL_RETRIEVAL_SIGNATURE),
        "popularity": lambda: m.rank_popularity(data, k),
        "ease": rank_ease,
    }
    if baseline_model_dir:
        rankers["last_blessed"] = lambda: rank_model(baseline_model_dir, data, catalog_ids, k)
    results, curves = {}, {}
    for name, rank in rankers.items():
        start = time.time()
        ranked = rank()
        results[name] = data.metrics(ranked)
        results[name]["slices"] = data.slices(ranked)
        results[name]["seconds"] = round(time.time() - start, 2)
        curves[name] = m.recall_curve(ranked, data.truth, RECALL_CURVE_KS)
        logging.info("RetrievalEvaluator: %s %s", name, results[name])
    results["ease"]["l2"] = l2
    results["ease"]["l2_validation_recall@50"] = {str(key): value for key, value in l2_scores.items()}
    results["ease"]["validation_percent"] = percent
    results["ease"]["seconds"] = round(results["ease"]["seconds"] + ease_seconds, 2)
    return results, curves


def write_report(out_dir: str, results: dict, curves: dict, blessed: bool, reasons: list[str]) -> None:
    """metrics.json, verdict.json, curves.json, the recall@k plot and report.md (whose text
    animerec.report.evaluation_markdown also builds for the run report, from the same files),
    in the Evaluation artifact's folder: local, or on gs:// in a Kubeflow run."""
    files.makedirs(out_dir)
    files.write_text(os.path.join(out_dir, METRICS_FILE), json.dumps(results, indent=2))
    files.write_text(
        os.path.join(out_dir, VERDICT_FILE), json.dumps({"blessed": blessed, "reasons": reasons}, indent=2)
    )
    files.write_text(os.path.join(out_dir, CURVES_FILE), json.dumps({"k": list(RECALL_CURVE_KS), **curves}, indent=2))
    plot_recall({"k": list(RECALL_CURVE_KS), **curves}, os.path.join(out_dir, RECALL_PLOT))
    lines = evaluation_markdown(results, blessed, reasons) + ["", f"![recall@k]({RECALL_PLOT})"]
    files.write_text(os.path.join(out_dir, REPORT_FILE), "\n".join(lines) + "\n")


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        from animerec.components.retrieval_evaluator.component import (
            BASELINE_DIR_KEY,
            BLESSING_KEY,
            EVALUATION_KEY,
            EXAMPLES_KEY,
            GATE_CONFIG_KEY,
            MODEL_KEY,
        )

        gate = parse_config(m.GateConfig, exec_properties[GATE_CONFIG_KEY], GATE_CONFIG_KEY)
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        model_dir = path_utils.serving_model_path(model.uri)
        baseline_dir = exec_properties.get(BASELINE_DIR_KEY)
        served = newest_version_dir(baseline_dir) if baseline_dir else None
        # The Trainer's output taken from the cache under a changed gate: the model being
        # evaluated is the one served already, so there is nothing new to bless.
        same_model = served is not None and same_saved_model(model_dir, served)

        results, curves = evaluate(examples, model_dir, None if same_model else served)
        blessed, reasons = m.decide_blessing(results, gate)
        if same_model:
            blessed = False
            reasons.append(f"NOT PUSHED AGAIN: this model (artifact {model.id}) is already served from {served}")
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        write_report(evaluation.uri, results, curves, blessed, reasons)

        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        io_utils.write_string_file(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "")
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        if served is not None:
            blessing.set_string_custom_property("baseline_model", served)
        logging.info("RetrievalEvaluator: %s\n  %s", "BLESSED" if blessed else "NOT BLESSED", "\n  ".join(reasons))
