"""Benchmarks that print figures (no timed assertions anywhere).

`animerec bench serve`: a full-size model (17.5k anime, 325k users, embedding 64)
is built from synthetic arrays without training, served by `animerec serve` in
its own process, and driven over loopback gRPC by 1, 4 and 16 concurrent
clients for a fixed time each.
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from animerec import features as f


def synthetic_training_data(users: int, anime: int, history: int, seen: int, seed: int = 0):
    """TrainingData of the real size with random ids: for benchmarks only."""
    from animerec.model.data import Catalog, TrainingData

    rng = np.random.default_rng(seed)
    catalog = Catalog(
        anime_id=np.sort(rng.choice(np.arange(1, anime * 3), anime, replace=False)),
        anime_index=np.arange(anime),
        titles=np.array([f"Anime {i}".encode() for i in range(anime)]),
        genres=np.array([b"Action, Drama"] * anime),
        tokens={
            name: rng.integers(0, f.TEXT_VOCAB_SIZE[name], (anime, length))
            for name, length in f.TEXT_MAX_TOKENS.items()
        },
        mal_score=np.full(anime, 7.0, np.float32),
        members=np.full(anime, 1000),
    )

    def csr(mean: int):
        lengths = np.minimum(rng.geometric(1.0 / mean, users), anime // 2)
        splits = np.zeros(users + 2, np.int64)
        np.cumsum(lengths, out=splits[1:-1])
        splits[-1] = splits[-2]  # the empty row for unknown users
        return splits, rng.integers(0, anime, int(splits[-1]))

    history_splits, history_values = csr(history)
    seen_splits, seen_values = csr(seen)
    return TrainingData(
        user_vocab_size=users,
        anime_vocab_size=anime,
        text_vocab_sizes=dict(f.TEXT_VOCAB_SIZE),
        catalog=catalog,
        user_index=history_values[:1000] * 0,
        anime_index=history_values[:1000],
        weight=np.ones(1000, np.float32),
        user_ids=np.append(np.arange(users), -1),
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
    )


def synthetic_second_stage(data, seed: int = 0):
    """A second stage of the default size with random weights (EASE over 8,000 titles at
    the default rank, the default ranker and candidate counts): for benchmarks only."""
    from animerec.config import TrainingConfig
    from animerec.evaluation import EASE_MAX_ITEMS
    from animerec.model import ranking, two_stage

    config = TrainingConfig()
    rng = np.random.default_rng(seed)
    catalog_size = len(data.catalog.anime_id)
    items = rng.choice(catalog_size, min(EASE_MAX_ITEMS, catalog_size), replace=False)
    item_in = np.zeros((catalog_size, config.item_item_rank), np.float32)
    item_in[items] = rng.normal(size=(len(items), config.item_item_rank))
    item_out = rng.normal(size=(config.item_item_rank, len(items) + 1)).astype(np.float32)
    item_out[:, -1] = 0.0
    column = np.full(catalog_size, len(items), np.int32)
    column[items] = np.arange(len(items))
    genres = ranking.genre_matrix(data.catalog.tokens[f.GENRE_TOKENS] % 40, 40)
    features = ranking.RankingFeatures(
        item_in,
        item_out,
        column,
        data.likes_by_catalog_position(),
        genres,
        data.catalog.mal_score,
        data.catalog.members,
    )
    width = len(ranking.FEATURE_NAMES)
    ranker = ranking.Ranker([0.0] * width, [1.0] * width, tuple(config.ranker_hidden_units[0]), config.ranker_members)
    ranker(np.zeros((1, 1, width), np.float32))  # builds its weights
    return two_stage.SecondStage(features, ranker, config.ranking_candidates, config.item_item_candidates, 0.25, {})


def build_serving_model(
    out_dir: str, users: int, anime: int, dim: int, history: int, seen: int, second_stage: bool = True
) -> str:
    """Exports an untrained full-size model as version 1 under out_dir (retrieval alone,
    or with a second stage of the default size)."""
    from animerec.config import TrainingConfig
    from animerec.model import export, retrieval

    data = synthetic_training_data(users, anime, history, seen)
    # The query tower of the default TrainingConfig: liked history only, no user id table.
    model = retrieval.RetrievalModel(
        data, dim, temperature=0.05, use_user_embedding=TrainingConfig().use_user_embedding
    )
    embeddings = retrieval.catalog_embeddings(model, data)
    path = os.path.join(out_dir, "1")
    stage = synthetic_second_stage(data) if second_stage else None
    export.export_serving_model(model, data, embeddings, top_k=100, path=path, second_stage=stage)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(target: str, timeout: float = 300.0) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    channel.close()


def drive(target: str, clients: int, seconds: float, users: int, seed: int = 0) -> dict:
    """`clients` threads, each one request at a time for one user, for `seconds`."""
    from animerec.serving.client import RecommenderClient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        client = RecommenderClient(target, timeout=10)
        stub, rng = client.stub, np.random.default_rng(seed + i)
        while time.perf_counter() < deadline:
            request = client.request([int(rng.integers(0, users))])
            start = time.perf_counter()
            try:
                stub.Predict(request, timeout=10)
                latencies[i].append(time.perf_counter() - start)
            except Exception:  # noqa: BLE001 - counted and reported, a benchmark keeps going
                errors[i] += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    all_ms = np.array([x for per in latencies for x in per]) * 1000
    return {
        "clients": clients,
        "requests": int(len(all_ms)),
        "errors": int(sum(errors)),
        "qps": round(len(all_ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(all_ms, 50)), 3),
        "p95_ms": round(float(np.percentile(all_ms, 95)), 3),
        "p99_ms": round(float(np.percentile(all_ms, 99)), 3),
    }


def model_only_ms(model_dirs: dict[str, str], users: int, rounds: int = 4, block: int = 250) -> dict[str, dict]:
    """Median latency of one serving_default call for one user, for each model of
    `model_dirs` (name -> version folder): in-process (the TF2 signature, TensorFlow's
    default threads) and in a Session configured as the server's (one intra-op thread,
    ops on the calling thread), which is what a served request runs. The models take
    turns in blocks of `block` calls (the first 20 of a block warm the caches up, as a
    server's steady stream of calls to its one model keeps them), `rounds` times, so that
    both see the same drift of the machine."""
    import tensorflow as tf

    from animerec.serving import versions

    callers = {}
    for name, model_dir in model_dirs.items():
        signature = tf.saved_model.load(model_dir).signatures[f.DEFAULT_SIGNATURE]
        loaded = versions.load_version(os.path.dirname(model_dir), int(os.path.basename(model_dir)))
        inputs = loaded.signature_defs[f.DEFAULT_SIGNATURE].inputs[f.SERVING_USER_ID].name
        outputs = [t.name for t in loaded.signature_defs[f.DEFAULT_SIGNATURE].outputs.values()]
        session_call = loaded.session.make_callable(outputs, feed_list=[inputs])
        callers[name] = {
            "in_process_ms": lambda user, s=signature: s(user_id=tf.constant(user)),
            "session_ms": lambda user, c=session_call: c(user),
        }
    rng = np.random.default_rng(1)
    times = {name: {kind: [] for kind in kinds} for name, kinds in callers.items()}
    for _ in range(rounds):
        for name, kinds in callers.items():
            for kind, call in kinds.items():
                for i in range(block):
                    user = np.array([int(rng.integers(0, users))], np.int64)
                    start = time.perf_counter()
                    call(user)
                    if i >= 20:
                        times[name][kind].append(time.perf_counter() - start)
    return {
        name: {kind: round(float(np.median(values)) * 1000, 3) for kind, values in kinds.items()}
        for name, kinds in times.items()
    }


def bench_serve(
    users: int = 325_000,
    anime: int = 17_500,
    dim: int = 64,
    history: int = 100,
    seen: int = 300,
    seconds: float = 10.0,
    levels: tuple[int, ...] = (1, 4, 16),
    progress=print,
) -> dict:
    """Both serving models, back to back in one run: retrieval alone, then the two stages,
    each served and driven by 1, 4 and 16 clients; then both models alone, called in turn."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for name, second_stage in (("retrieval only", False), ("two stages", True)):
            progress(f"== {name}")
            model_dirs[name], out[name] = _bench_one_model(
                os.path.join(tmp, name.replace(" ", "_")),
                users,
                anime,
                dim,
                history,
                seen,
                seconds,
                levels,
                second_stage,
                progress,
            )
        progress("== each model alone, one user a call, the models in turns of 250 calls")
        for name, figures in model_only_ms(model_dirs, users).items():
            out[name].update(figures)
            one_client = out[name]["levels"][0]["p50_ms"] if out[name]["levels"] else float("nan")
            progress(
                f"{name}: {figures['in_process_ms']:.2f} ms in-process, {figures['session_ms']:.2f} ms in the "
                f"server's Session; the rest of a served request at 1 client (p50): "
                f"{one_client - figures['session_ms']:.2f} ms"
            )
    return out


def _bench_one_model(serving_dir, users, anime, dim, history, seen, seconds, levels, second_stage, progress):
    """Builds one model under serving_dir, serves it and drives it; returns its version folder and figures."""
    start = time.time()
    model_dir = build_serving_model(serving_dir, users, anime, dim, history, seen, second_stage)
    size_mb = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(model_dir) for n in ns) / 1e6
    progress(
        f"Built a {users:,}-user, {anime:,}-anime, dim-{dim} model ({size_mb:,.0f} MB) in {time.time() - start:.0f}s"
    )
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    server = subprocess.Popen(
        [sys.executable, "-m", "animerec.cli", "serve", "--model-dir", serving_dir, "--port", str(port)]
        + ["--rest-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        target = f"localhost:{port}"
        _wait_for_server(target)
        drive(target, 1, 2.0, users)  # warm-up
        results = []
        for clients in levels:
            result = drive(target, clients, seconds, users)
            results.append(result)
            progress(
                f"{clients:>3} clients: {result['qps']:>8.1f} req/s  p50 {result['p50_ms']:.2f} ms  "
                f"p95 {result['p95_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  errors {result['errors']}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return model_dir, {"levels": results, "size_mb": round(size_mb)}


def main_serve(args) -> int:
    result = bench_serve(
        users=args.users,
        anime=args.anime,
        dim=args.dim,
        seconds=args.seconds,
        levels=tuple(args.levels),
        progress=(lambda _: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result))
    return 0


def write_training_examples(path: str, user_index: np.ndarray, anime_index: np.ndarray, liked: np.ndarray) -> None:
    """Interaction rows in the layout of Transform's output (GZIP TFRecords)."""
    import tensorflow as tf

    from animerec.data.convert import encode_examples

    columns = {
        f.USER_INDEX: user_index.astype(np.int64),
        f.ANIME_INDEX: anime_index.astype(np.int64),
        f.LIKED: liked.astype(np.int64),
        f.WEIGHT: np.ones(len(user_index), np.float32),
    }
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in encode_examples(columns):
            writer.write(record)


def bench_train(
    users: int = 4_000,
    anime: int = 17_500,
    rows: int = 1_000_000,
    batch_sizes: tuple[int, ...] = (1024, 4096, 8192),
    steps: int | None = None,
    progress=print,
) -> dict:
    """Training examples/s of the default model (text features, history tower, logQ) per
    batch size, fed the way the Trainer is: streamed from GZIP TFRecords through the
    windowed shuffle, with each row's liked history gathered beside the step; timed over
    one epoch of liked rows (or `steps`) after a warm-up, so reading the next shuffle
    window is included.

    The data has MAL's shape where it sets the cost: 60% of rows liked, about 150 liked
    titles per user, the real text vocabulary sizes, and item popularity following a
    power law fitted to the real sample's liked rows (about 740 distinct titles per
    1,024 rows, 2,000 per 4,096).
    """
    import dataclasses

    import tensorflow as tf

    from animerec.config import TrainingConfig
    from animerec.model import retrieval
    from animerec.model.data import _csr

    config = TrainingConfig()
    rng = np.random.default_rng(0)
    popularity = (np.arange(anime) + 30.0) ** -1.1
    user_index = rng.integers(0, users, rows)
    anime_index = rng.choice(anime, rows, p=popularity / popularity.sum())
    liked = rng.random(rows) < 0.6
    history_splits, history_values = _csr(user_index[liked], anime_index[liked], users + 1)
    data = dataclasses.replace(
        synthetic_training_data(users, anime, history=1, seen=1),
        history_splits=history_splits,
        history_values=history_values,
    )
    spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in (f.USER_INDEX, f.ANIME_INDEX, f.LIKED)}
    spec[f.WEIGHT] = tf.io.FixedLenFeature([], tf.float32)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"part-{i}.gz") for i in range(2)]
        for i, path in enumerate(files):
            write_training_examples(path, user_index[i::2], anime_index[i::2], liked[i::2])
        for batch_size in batch_sizes:
            model = retrieval.build_model_from_config(data, config)
            dataset = retrieval.streaming_training_dataset(files, spec, data, batch_size, config.shuffle_buffer)
            model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # trace, fill the first window
            timed_steps = steps or data.liked_rows // batch_size
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=timed_steps, epochs=1, verbose=0)
            seconds = time.perf_counter() - start
            result = {"batch_size": batch_size, "examples_per_second": round(timed_steps * batch_size / seconds)}
            results.append(result)
            progress(f"batch {batch_size:>5}: {result['examples_per_second']:>8,} examples/s")
    naive = naive_tfrs_examples_per_second(users, anime, user_index[liked], anime_index[liked], steps or 40)
    progress(f"naive TFRS baseline (ids only, tfrs Retrieval task, batch 4096, dim 64): {naive:>8,} examples/s")
    return {
        "levels": results,
        "naive_tfrs_batch_4096": naive,
        "users": users,
        "anime": anime,
        "liked_rows": data.liked_rows,
    }


def naive_tfrs_examples_per_second(
    users: int, anime: int, user_index: np.ndarray, anime_index: np.ndarray, steps: int
) -> int:
    """The textbook setup the product replaced: id embeddings and tfrs.tasks.Retrieval."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    class Naive(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.users = tf.keras.layers.Embedding(users + 1, 64)
            self.items = tf.keras.layers.Embedding(anime + 1, 64)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, inputs, training=False):
            u, a = inputs
            return self.task(self.users(u), self.items(a), compute_metrics=False, compute_batch_metrics=False)

    model = Naive()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.005))
    dataset = (
        tf.data.Dataset.from_tensor_slices((user_index, anime_index))
        .shuffle(100_000)
        .batch(4096, drop_remainder=True)
        .repeat()
    )
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return round(steps * 4096 / (time.perf_counter() - start))


def main_train(args) -> int:
    result = bench_train(
        batch_sizes=tuple(args.batch_sizes), steps=args.steps, progress=(lambda _: None) if args.json else print
    )
    if args.json:
        print(json.dumps(result))
    return 0


class _TreeMemory:
    """Samples the resident memory of this process and its children (Beam workers),
    overall and per pipeline stage (`stage` is set from the runner's progress lines).

    Past `limit` bytes it stops the run instead of letting the kernel's OOM killer pick
    a process: the workers are killed, the main thread gets KeyboardInterrupt, and
    `exceeded` names the stage and the memory reached."""

    def __init__(self, interval: float = 0.5, limit: int | None = None):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.limit = limit
        self.exceeded: tuple[str, int] | None = None
        self.peak = 0
        self.stage = "convert"
        self.by_stage: dict[str, int] = {}
        # The main process alone: the runner, and the in-process Trainer and Evaluator.
        self.main_by_stage: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = self._psutil.Process()
        while not self._stop.wait(self.interval):
            try:
                main = me.memory_info().rss
                total = main + sum(c.memory_info().rss for c in me.children(recursive=True))
            except self._psutil.Error:
                continue
            self.main_by_stage[self.stage] = max(self.main_by_stage.get(self.stage, 0), main)
            self.peak = max(self.peak, total)
            self.by_stage[self.stage] = max(self.by_stage.get(self.stage, 0), total)
            if self.limit and total > self.limit and self.exceeded is None:
                self.exceeded = (self.stage, total)
                for child in me.children(recursive=True):
                    child.kill()
                _thread.interrupt_main()

    def follow(self, line: str) -> None:
        """A progress line "[HH:MM:SS] Stage ..." starts a stage."""
        if line.startswith("[") and line.endswith(" ..."):
            self.stage = line.split("] ", 1)[1][: -len(" ...")]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


FULL_ROWS = 109_000_000
ROWS_PER_USER = 313  # what --rows-per-user 750 yields at 17.5k anime, as at the full scale
PIPELINE_STAGES = ("convert", "ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "RetrievalEvaluator")


def bench_pipeline(
    sizes=(1_000_000, 5_000_000, 20_000_000),
    workdir: str | None = None,
    epochs: int = 1,
    memory_limit_gb: float | None = None,
    progress=print,
) -> dict:
    """Per-stage wall time, rows/s and peak memory of the whole pipeline at each size.

    A size whose process tree passes `memory_limit_gb` (default: 90% of this machine's
    memory) is stopped and reported with the stage it reached; larger sizes are skipped.
    """
    import psutil

    from animerec.config import TrainingConfig
    from animerec.data import synth
    from animerec.evaluation import GateConfig
    from animerec.pipeline import local_runner

    workdir = workdir or tempfile.mkdtemp(prefix="animerec-bench-")
    limit = int((memory_limit_gb or 0.9 * psutil.virtual_memory().total / 1e9) * 1e9)
    results, stopped = [], None
    for rows in sizes:
        users = max(100, rows // ROWS_PER_USER)
        data_dir = os.path.join(workdir, f"data-{rows}")
        start = time.time()
        summary = synth.synthesize(
            data_dir, synth.SynthConfig(users=users, anime=17_500, mean_rows_per_user=750.0), progress=lambda _: None
        )
        synth_seconds = time.time() - start
        out_dir = os.path.join(workdir, f"out-{rows}")
        with _TreeMemory(limit=limit) as memory:
            try:
                run = local_runner.run_local(
                    data_dir,
                    out_dir,
                    training=TrainingConfig(epochs=epochs, batch_size=4096),
                    gate=GateConfig(min_value=0.0, min_lift_over_popularity=-1.0, max_regression=1.0),
                    progress=memory.follow,
                )
            except KeyboardInterrupt:
                if memory.exceeded is None:
                    raise
        actual = summary["animelist_rows"]
        if memory.exceeded is not None:
            stage, reached = memory.exceeded
            stopped = {"rows": actual, "stage": stage, "memory_gb": round(reached / 1e9, 2), "limit_gb": limit / 1e9}
            progress(
                f"{actual:>11,} rows: stopped in {stage} at {stopped['memory_gb']} GB "
                f"(limit {limit / 1e9:.1f} GB); larger sizes skipped"
            )
            break
        stages = {s: round(run["seconds"].get(s, 0.0), 1) for s in PIPELINE_STAGES}
        result = {
            "rows": actual,
            "users": users,
            "synth_seconds": round(synth_seconds, 1),
            "stages_seconds": stages,
            "total_seconds": round(run["seconds"]["total"], 1),
            "rows_per_second": round(actual / run["seconds"]["total"]),
            "peak_memory_gb": round(memory.peak / 1e9, 2),
            "stage_peak_memory_gb": {s: round(memory.by_stage.get(s, 0) / 1e9, 2) for s in PIPELINE_STAGES},
            "stage_peak_main_memory_gb": {s: round(memory.main_by_stage.get(s, 0) / 1e9, 2) for s in PIPELINE_STAGES},
        }
        results.append(result)
        progress(
            f"{actual:>11,} rows: total {result['total_seconds']:>7.1f}s ({result['rows_per_second']:,} rows/s), peak {result['peak_memory_gb']} GB; "
            + ", ".join(
                f"{k} {v}s ({result['stage_peak_memory_gb'][k]} GB, main process "
                f"{result['stage_peak_main_memory_gb'][k]} GB)"
                for k, v in stages.items()
            )
        )
    if not results:
        return {"sizes": [], "stopped": stopped}
    largest = results[-1]
    extrapolated = {s: round(v * FULL_ROWS / largest["rows"]) for s, v in largest["stages_seconds"].items()}
    progress(
        f"Linear extrapolation to {FULL_ROWS:,} rows (from the largest size): "
        + ", ".join(f"{k} {v / 60:.0f} min" for k, v in extrapolated.items())
    )
    return {"sizes": results, "stopped": stopped, "extrapolated_full_seconds": extrapolated}


def main_pipeline(args) -> int:
    result = bench_pipeline(
        tuple(args.rows),
        workdir=args.workdir,
        memory_limit_gb=args.memory_limit_gb,
        progress=(lambda _: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result))
    return 0
