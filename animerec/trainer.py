"""The Trainer's run_fn: read the examples through Transform's graph, fit both stages, export for serving.

Kept thin; the towers, the model, the data and the signatures live in animerec.model.
"""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from animerec import features as f
from animerec.config import TrainingConfig, parse_config
from animerec.data import files
from animerec.model import data as model_data
from animerec.model import export, retrieval, two_stage
from animerec.pipeline.artifacts import EMBEDDINGS_FILE, HISTORY_FILE


def split_patterns(file_patterns, split: str) -> list[str]:
    """The patterns of one TFX split (folders named Split-<name>) among the Trainer's inputs."""
    patterns = model_data.as_patterns(file_patterns)
    found = [p for p in patterns if f"Split-{split}" in p.replace("\\", "/").split("/")]
    if not found:
        raise ValueError(f"no {split} split among the Trainer's inputs {patterns}")
    return found


def load_training_data(train_files, tf_transform_output: tft.TFTransformOutput, read, validation_percent: int = 0):
    """`read`: model_data.transformed_reader's function over the raw examples."""
    return model_data.load_training_data(
        split_patterns(train_files, f.TRAIN_SPLIT),
        split_patterns(train_files, f.CATALOG_SPLIT),
        read,
        user_vocabulary=tf_transform_output.vocabulary_by_name(f.USER_VOCAB),
        anime_vocab_size=tf_transform_output.vocabulary_size_by_name(f.ANIME_VOCAB),
        text_vocab_sizes={name: tf_transform_output.vocabulary_size_by_name(v) + 1 for name, v in f.TEXT_VOCAB.items()},
        validation_percent=validation_percent,
    )


def epochs_and_steps(rows: int, batch_size: int, epochs: int, train_steps: int | None) -> tuple[int, int]:
    """Keras epochs and steps per epoch: `epochs` passes over the rows, or, with
    `train_steps` (TFX's TrainArgs.num_steps), as many epochs of at most a pass each as
    that takes, the steps spread evenly (at most epochs - 1 steps more than asked)."""
    steps_per_epoch = max(1, rows // batch_size)
    if not train_steps:
        return epochs, steps_per_epoch
    epochs = math.ceil(train_steps / steps_per_epoch)
    return epochs, math.ceil(train_steps / epochs)


def write_model_run(
    model_run_dir: str, history: dict, anime_id: np.ndarray, genres: np.ndarray, embeddings: np.ndarray
) -> None:
    """The Trainer's ModelRun artifact: HISTORY_FILE (the fit's history and config) and
    EMBEDDINGS_FILE (each catalog title's id, genres and embedding, for the report's map),
    in a local folder or one on any filesystem TensorFlow writes (a Kubeflow run's gs://)."""
    files.makedirs(model_run_dir)
    files.write_text(os.path.join(model_run_dir, HISTORY_FILE), json.dumps(history, indent=2))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, anime_id=anime_id, genres=np.asarray(genres).astype("S"), embeddings=embeddings)
    files.write_bytes(os.path.join(model_run_dir, EMBEDDINGS_FILE), buffer.getvalue())


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (generic trainer)."""
    config = parse_config(TrainingConfig, fn_args.custom_config, "training_config")
    tf.keras.utils.set_random_seed(config.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    start = time.time()
    read = model_data.transformed_reader(tf_transform_output)
    data = load_training_data(fn_args.train_files, tf_transform_output, read, config.validation_percent)
    logging.info(
        "Loaded %d liked rows, %d users, %d catalog anime in %.1fs",
        data.liked_rows,
        data.user_vocab_size,
        len(data.catalog.anime_id),
        time.time() - start,
    )
    model = retrieval.build_model_from_config(data, config)
    dataset = retrieval.training_dataset(data, config.batch_size, seed=config.seed, repeat=True)
    epochs, steps_per_epoch = epochs_and_steps(data.liked_rows, config.batch_size, config.epochs, fn_args.train_steps)
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")
    start = time.time()
    history = model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[tensorboard], verbose=2)
    del dataset  # its generator holds a pass's permutation; the rows stay in `data`
    seconds = time.time() - start
    examples_per_second = epochs * steps_per_epoch * config.batch_size / seconds

    # Every choice of the second stage is made on the validation rows carved out of train.
    start = time.time()
    second_stage = two_stage.fit_second_stage(model, data, config)
    second_stage_seconds = time.time() - start
    validation = second_stage.report if second_stage else {}
    with tf.summary.create_file_writer(os.path.join(fn_args.model_run_dir, "validation")).as_default():
        for name, value in validation.get("validation_recall@50", {}).items():
            tf.summary.scalar(f"recall@50/{name}", value, step=epochs)

    # The exported model knows every training row, and excludes the eval rows as seen
    # (the eval split is read for that alone, never to choose anything).
    eval_columns = model_data.concatenate(
        read(fn_args.eval_files, (f.USER_INDEX, f.ANIME_ID)),
        (f.USER_INDEX, f.ANIME_ID),
    )
    data = data.with_validation_in_history().with_heldout(
        eval_columns[f.USER_INDEX].reshape(-1), eval_columns[f.ANIME_ID].reshape(-1)
    )
    prior = second_stage.popularity_prior if second_stage else config.popularity_prior_grid[0]
    catalog_bias = retrieval.popularity_bias(data, prior, config.temperature)
    embeddings = retrieval.catalog_embeddings(model, data)
    export.export_serving_model(
        model, data, embeddings, config.top_k, fn_args.serving_model_dir, catalog_bias, second_stage
    )
    files.write_text(
        os.path.join(fn_args.serving_model_dir, f.TRAINING_CONFIG_FILE), json.dumps(config.to_json_dict(), indent=2)
    )
    write_model_run(
        fn_args.model_run_dir,
        {
            "loss": [float(x) for x in history.history["loss"]],
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": config.batch_size,
            "train_seconds": seconds,
            "examples_per_second": examples_per_second,
            "second_stage_seconds": second_stage_seconds,
            "validation": validation,
            "config": config.to_json_dict(),
        },
        data.catalog.anime_id,
        data.catalog.genres,
        embeddings,
    )
