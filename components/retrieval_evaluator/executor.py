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

from animerec import features as f
from animerec.components.retrieval_evaluator import metrics as m

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
RECALL_CURVE_KS = (5, 10, 20, 30, 50, 75, 100)
# EASE inverts an items x items matrix: it covers the most-liked titles up to this many.
EASE_MAX_ITEMS = 8000
EASE_L2 = 200.0
MAX_EVAL_USERS = 20000
SCORE_BATCH = 512


def _read_split(examples: types.Artifact, split: str) -> dict[str, np.ndarray]:
    from animerec.model.data import read_examples  # noqa: PLC0415

    pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
    spec = {name: tf.io.FixedLenFeature([1], tf.int64) for name in (f.USER_ID, f.ANIME_ID, f.LIKED)}
    return {k: v.reshape(-1) for k, v in read_examples(pattern, spec).items()}


class EvalData:
    """The eval split's truth and the training split's liked and seen titles, by catalog position."""

    def __init__(self, train: dict, eval_: dict, catalog_ids: np.ndarray, max_users: int = MAX_EVAL_USERS):
        self.catalog_ids = np.sort(catalog_ids)
        users = np.unique(eval_[f.USER_ID])
        if len(users) > max_users:
            users = np.random.default_rng(0).choice(users, max_users, replace=False)
            users.sort()
        self.users = users
        user_pos = {int(u): i for i, u in enumerate(users)}
        self.truth = [set() for _ in users]
        for u, a in zip(eval_[f.USER_ID], self._positions(eval_[f.ANIME_ID])):
            if int(u) in user_pos:
                self.truth[user_pos[int(u)]].add(int(a))
        is_interaction = train[f.USER_ID] != f.NO_USER
        train_users = train[f.USER_ID][is_interaction]
        positions = self._positions(train[f.ANIME_ID][is_interaction])
        liked = train[f.LIKED][is_interaction] == 1
        self.liked_user, self.liked_position = train_users[liked], positions[liked]
        in_eval = np.isin(train_users, users)
        self.seen_row = np.searchsorted(users, train_users[in_eval])
        self.seen_col = positions[in_eval]

    def _positions(self, anime_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.catalog_ids, anime_ids)

    def metrics(self, ranked_positions: np.ndarray) -> dict:
        return m.retrieval_metrics(ranked_positions, self.truth, len(self.catalog_ids))

    def curve(self, ranked_positions: np.ndarray) -> list[float]:
        return m.recall_curve(ranked_positions, self.truth, RECALL_CURVE_KS)


def _seen_in(data: EvalData, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Seen (row, column) pairs of users [start, stop), rows counted from start."""
    seen = (data.seen_row >= start) & (data.seen_row < stop)
    return data.seen_row[seen] - start, data.seen_col[seen]


def rank_popularity(data: EvalData, k: int) -> np.ndarray:
    popularity = m.popularity_scores(data.liked_position, len(data.catalog_ids))
    ranked = []
    for start in range(0, len(data.users), SCORE_BATCH):
        users = data.users[start : start + SCORE_BATCH]
        scores = np.tile(popularity, (len(users), 1))
        ranked.append(m.top_k(m.mask_seen(scores, *_seen_in(data, start, start + len(users))), k))
    return np.concatenate(ranked) if ranked else np.zeros((0, k), np.int64)


def rank_ease(data: EvalData, k: int, l2: float = EASE_L2, max_items: int = EASE_MAX_ITEMS) -> np.ndarray:
    counts = np.bincount(data.liked_position, minlength=len(data.catalog_ids))
    items = np.argsort(-counts, kind="stable")[: min(max_items, int((counts > 0).sum()))]
    column = np.full(len(data.catalog_ids), -1)
    column[items] = np.arange(len(items))
    keep = column[data.liked_position] >= 0
    users, user_rows = np.unique(data.liked_user[keep], return_inverse=True)
    weights = m.ease_item_weights(user_rows, column[data.liked_position[keep]], len(items), l2)
    ranked = []
    for start in range(0, len(data.users), SCORE_BATCH):
        batch_users = data.users[start : start + SCORE_BATCH]
        x = np.zeros((len(batch_users), len(items)), np.float32)
        rows = np.searchsorted(batch_users, data.liked_user[keep])
        in_batch = (rows < len(batch_users)) & (
            batch_users[np.minimum(rows, len(batch_users) - 1)] == data.liked_user[keep]
        )
        x[rows[in_batch], column[data.liked_position[keep]][in_batch]] = 1.0
        scores = np.full((len(batch_users), len(data.catalog_ids)), -1e9, np.float32)
        scores[:, items] = x @ weights
        scores = m.mask_seen(scores, *_seen_in(data, start, start + len(batch_users)))
        ranked.append(m.top_k(scores, k))
    return np.concatenate(ranked)


def rank_model(model_dir: str, data: EvalData, k: int) -> np.ndarray:
    """Top k catalog positions from the SavedModel's eval signature (training titles excluded)."""
    loaded = tf.saved_model.load(model_dir)
    recommend = loaded.signatures[f.EVAL_SIGNATURE]
    ranked = []
    for start in range(0, len(data.users), SCORE_BATCH):
        users = data.users[start : start + SCORE_BATCH]
        out = recommend(
            user_id=tf.constant(users, tf.int64),
            k=tf.constant(k, tf.int32),
            exclude_anime_ids=tf.zeros([len(users), 0], tf.int64),
        )
        ranked.append(data._positions(out[f.OUTPUT_ANIME_IDS].numpy()))
    return np.concatenate(ranked)


def evaluate(examples: types.Artifact, model_dir: str, baseline_model_dir: str | None) -> tuple[dict, dict]:
    """Metrics and recall curves for the model, the baselines and the last blessed model."""
    train = _read_split(examples, f.TRAIN_SPLIT)
    catalog = _read_split(examples, f.CATALOG_SPLIT)
    data = EvalData(train, _read_split(examples, f.EVAL_SPLIT), catalog[f.ANIME_ID])
    k = min(max(m.KS), len(data.catalog_ids))
    rankers = {
        "model": lambda: rank_model(model_dir, data, k),
        "popularity": lambda: rank_popularity(data, k),
        "ease": lambda: rank_ease(data, k),
    }
    if baseline_model_dir:
        rankers["last_blessed"] = lambda: rank_model(baseline_model_dir, data, k)
    results, curves = {}, {}
    for name, rank in rankers.items():
        start = time.time()
        ranked = rank()
        results[name] = data.metrics(ranked)
        results[name]["seconds"] = round(time.time() - start, 2)
        curves[name] = data.curve(ranked)
        logging.info("RetrievalEvaluator: %s %s", name, results[name])
    return results, curves


def write_report(out_dir: str, results: dict, curves: dict, blessed: bool, reasons: list[str]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, METRICS_FILE), "w") as fh:
        json.dump(results, fh, indent=2)
    names = list(results)
    columns = [f"{kind}@{k}" for kind in ("recall", "ndcg") for k in m.KS] + ["hit_rate@10", "coverage@50"]
    lines = [
        f"# Retrieval evaluation: {'BLESSED' if blessed else 'NOT BLESSED'}",
        "",
        f"Eval users: {results['model']['users']:,}; ranked over the full catalog with each user's training titles excluded.",
        "",
        "| system | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{results[name][c]:.4f}" for c in columns) + " |")
    lines += ["", "## Blessing", ""] + [f"- {r}" for r in reasons]
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            ax.plot(RECALL_CURVE_KS, curves[name], marker="o", label=name)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_title("Recall@k on the eval split")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "recall_at_k.png"), dpi=110)
        plt.close(fig)
        lines += ["", "![recall@k](recall_at_k.png)"]
    except ImportError:
        logging.warning("matplotlib is not installed; the report has no plot")
    with open(os.path.join(out_dir, REPORT_FILE), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "curves.json"), "w") as fh:
        json.dump({"k": list(RECALL_CURVE_KS), **curves}, fh, indent=2)


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        from animerec.components.retrieval_evaluator.component import (  # noqa: PLC0415
            BASELINE_MODEL_KEY,
            BLESSING_KEY,
            EVALUATION_KEY,
            EXAMPLES_KEY,
            GATE_CONFIG_KEY,
            MODEL_KEY,
        )

        gate = m.GateConfig(**json.loads(exec_properties[GATE_CONFIG_KEY]))
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        baselines = input_dict.get(BASELINE_MODEL_KEY) or []
        baseline = baselines[0] if baselines else None
        # A rerun over cached inputs resolves the model under evaluation as the last
        # blessed one: it was pushed already, so there is nothing new to bless.
        same_model = baseline is not None and baseline.id == model.id
        baseline_dir = path_utils.serving_model_path(baseline.uri) if baseline is not None and not same_model else None

        results, curves = evaluate(examples, path_utils.serving_model_path(model.uri), baseline_dir)
        blessed, reasons = m.decide_blessing(results, gate)
        if same_model:
            blessed = False
            reasons.append(f"NOT PUSHED AGAIN: this model (artifact {model.id}) is already the last blessed model")
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        write_report(evaluation.uri, results, curves, blessed, reasons)

        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        io_utils.write_string_file(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "")
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        if baseline is not None:
            blessing.set_string_custom_property("baseline_model", baseline.uri)
            blessing.set_int_custom_property("baseline_model_id", baseline.id)
        logging.info("RetrievalEvaluator: %s\n  %s", "BLESSED" if blessed else "NOT BLESSED", "\n  ".join(reasons))
