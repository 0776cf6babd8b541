"""The run report: metrics.json and a Markdown page with plots, under <output>/report/.

Plots: training loss per epoch, recall@k of the model against the baselines,
and a 2-D map of the anime embeddings coloured by main genre.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from animerec.data import files
from animerec.evaluation import KS

MAP_POINTS = 2000
MAP_GENRES = 10


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    """The figure as a PNG at `path` (local, or on any filesystem TensorFlow writes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    files.write_bytes(path, buffer.getvalue())
    _plt().close(fig)


def plot_loss(history: dict, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(history["loss"]) + 1), history["loss"], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (in-batch softmax, logQ-corrected)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_recall(curves: dict, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        if name != "k":
            ax.plot(curves["k"], values, marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title("Recall@k on the eval split (full catalog)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def embedding_map(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the embeddings (cosine), PCA-initialised."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, len(embeddings) // 4)))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        embeddings
    )


def plot_embeddings(anime_embeddings: dict, path: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = len(anime_embeddings["anime_id"])
    pick = np.sort(rng.choice(n, size=min(n, MAP_POINTS), replace=False))
    genres = np.array([g.decode() if isinstance(g, bytes) else str(g) for g in anime_embeddings["genres"][pick]])
    main = np.array([g.split(",")[0].strip() or "(none)" for g in genres])
    points = embedding_map(anime_embeddings["embeddings"][pick], seed)
    names, counts = np.unique(main, return_counts=True)
    top = names[np.argsort(-counts)][:MAP_GENRES]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    other = ~np.isin(main, top)
    ax.scatter(points[other, 0], points[other, 1], s=4, c="lightgrey", label="other")
    for genre in top:
        sel = main == genre
        ax.scatter(points[sel, 0], points[sel, 1], s=6, label=genre)
    ax.set_title("Anime embeddings (t-SNE), coloured by main genre")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)


EVALUATION_COLUMNS = [f"{kind}@{k}" for kind in ("recall", "ndcg") for k in KS] + [
    "hit_rate@10",
    "coverage@50",
]
# The run report's own plots, beside the Evaluator's (artifacts.RECALL_PLOT).
LOSS_PLOT = "loss.png"
EMBEDDINGS_PLOT = "embeddings.png"
# A run's console summary: one line a system.
SUMMARY_COLUMNS = [f"recall@{k}" for k in KS] + ["ndcg@50", "coverage@50"]


def summary_line(system: str, values: dict) -> str:
    """One system's headline metrics (a metrics.json entry) as the console prints them."""
    return f"  {system:14s} " + "  ".join(f"{column} {values[column]:.4f}" for column in SUMMARY_COLUMNS)


def evaluation_markdown(results: dict, blessed: bool, reasons: list[str], level: int = 1) -> list[str]:
    """The RetrievalEvaluator's report as Markdown lines, its title at heading `level`."""
    h = "#" * level
    names = list(results)
    lines = [
        f"{h} Retrieval evaluation: {'BLESSED' if blessed else 'NOT BLESSED'}",
        "",
        f"Eval users: {results['model']['users']:,}; ranked over the full catalog with each user's training titles excluded.",
        "",
        "| system | " + " | ".join(EVALUATION_COLUMNS) + " |",
        "|---|" + "---|" * len(EVALUATION_COLUMNS),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{results[name][c]:.4f}" for c in EVALUATION_COLUMNS) + " |")
    slice_names = list(results["model"]["slices"])
    lines += [
        "",
        f"{h}# Slices (recall@50)",
        "",
        "Users by the number of titles they liked in training, and held-out titles nobody liked in training (cold).",
        "",
        "| system | " + " | ".join(f"{n} ({results['model']['slices'][n]['users']} users)" for n in slice_names) + " |",
        "|---|" + "---|" * len(slice_names),
    ]
    for name in names:
        cells = [results[name]["slices"][n]["recall@50"] for n in slice_names]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    ease = results["ease"]
    lines += [
        "",
        f"EASE's L2 ({ease['l2']:g}) was chosen on the validation split"
        + (f" ({ease['validation_percent']}% of train's liked rows)" if "validation_percent" in ease else "")
        + f": recall@50 {ease['l2_validation_recall@50']}.",
    ]
    return lines + ["", f"{h}# Blessing", ""] + [f"- {r}" for r in reasons]


def write_report(output_dir: str) -> str:
    """Regenerates <output_dir>/report from the newest Trainer and Evaluator outputs."""
    from animerec.pipeline import artifacts
    from animerec.pipeline.local_runner import output_paths

    metadata = output_paths(output_dir)["metadata"]
    evaluation_uri = artifacts.latest_output_uri(metadata, artifacts.EVALUATOR, "evaluation")
    model_run_uri = artifacts.latest_output_uri(metadata, artifacts.TRAINER, "model_run")
    if evaluation_uri is None or model_run_uri is None:
        raise FileNotFoundError(f"{output_dir}: no finished Trainer and RetrievalEvaluator outputs to report on")
    metrics_path = os.path.join(evaluation_uri, artifacts.METRICS_FILE)
    history_path = os.path.join(model_run_uri, artifacts.HISTORY_FILE)
    report_dir = os.path.join(output_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    # The artifacts are read through `files`: local here, and any filesystem TensorFlow reads.
    history = json.loads(files.read_text(history_path))
    curves = json.loads(files.read_text(os.path.join(evaluation_uri, artifacts.CURVES_FILE)))
    metrics_text = files.read_text(metrics_path)
    files.write_text(os.path.join(report_dir, artifacts.METRICS_FILE), metrics_text)
    plot_loss(history, os.path.join(report_dir, LOSS_PLOT))
    plot_recall(curves, os.path.join(report_dir, artifacts.RECALL_PLOT))
    embeddings = np.load(io.BytesIO(files.read_bytes(os.path.join(model_run_uri, artifacts.EMBEDDINGS_FILE))))
    plot_embeddings(dict(embeddings), os.path.join(report_dir, EMBEDDINGS_PLOT))
    verdict = json.loads(files.read_text(os.path.join(evaluation_uri, artifacts.VERDICT_FILE)))
    evaluation_lines = evaluation_markdown(json.loads(metrics_text), verdict["blessed"], verdict["reasons"], level=2)
    lines = [
        "# animerec run report",
        "",
        f"Trainer: {history['epochs']} epochs of {history['steps_per_epoch']} steps, batch {history['batch_size']}, "
        f"{history['examples_per_second']:,.0f} training examples/s, config {json.dumps(history['config'])}.",
        "",
        *evaluation_lines,
        "",
        f"![training loss]({LOSS_PLOT})",
        "",
        f"![recall@k]({artifacts.RECALL_PLOT})",
        "",
        f"![anime embeddings]({EMBEDDINGS_PLOT})",
        "",
    ]
    path = os.path.join(report_dir, artifacts.REPORT_FILE)
    files.write_text(path, "\n".join(lines))
    return path
