"""`animerec bench serve`: a full-size model (17.5k anime, 325k users, embedding 64) is
built from synthetic arrays without training, served by `animerec serve` in its own
process, and driven over loopback gRPC by 1, 4 and 16 concurrent clients for a fixed
time each; then each model alone, in-process and in the server's Session configuration.
"""

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
from animerec.bench.synthetic import synthetic_second_stage, synthetic_training_data


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
    figures = latency_figures([x for per in latencies for x in per])
    return {
        "clients": clients,
        "requests": figures["requests"],
        "errors": int(sum(errors)),
        "qps": round(figures["requests"] / elapsed, 1),
        **{key: value for key, value in figures.items() if key != "requests"},
    }


def latency_figures(seconds: list[float]) -> dict:
    """The number of requests and the p50, p95 and p99 latency (ms) of `seconds` (NaN
    when none answered: a run whose every request failed reports its errors)."""
    ms = np.array(seconds) * 1000
    return {
        "requests": len(ms),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) if len(ms) else float("nan") for q in (50, 95, 99)},
    }


def rise_interval(
    base_rounds: list[list[float]],
    other_rounds: list[list[float]],
    q: float = 99,
    level: float = 90,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """How far `other`'s q-th latency percentile (ms) lies above `base`'s, as an interval at
    `level` percent: the rounds (round r holds each model's block r, seconds) are resampled
    whole, with replacement, so that the machine's drift within a run, which moves both
    blocks of a round, is in the interval. A single run's rise is one draw of this."""
    if len(base_rounds) != len(other_rounds) or not base_rounds:
        raise ValueError(f"needs paired rounds; got {len(base_rounds)} and {len(other_rounds)}")
    rng = np.random.default_rng(seed)
    base = [np.asarray(r, np.float64) * 1000 for r in base_rounds]
    other = [np.asarray(r, np.float64) * 1000 for r in other_rounds]
    rises = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(base), len(base))
        rises.append(
            np.percentile(np.concatenate([other[i] for i in chosen]), q)
            - np.percentile(np.concatenate([base[i] for i in chosen]), q)
        )
    tail = (100 - level) / 2
    low, high = np.percentile(rises, [tail, 100 - tail])
    return round(float(low), 3), round(float(high), 3)


def model_only_ms(model_dirs: dict[str, str], users: int, rounds: int = 10, block: int = 250) -> dict[str, dict]:
    """Latency of one serving_default call for one user (median `{kind}_ms` and
    `{kind}_p99_ms`), for each model of `model_dirs` (name -> version folder), three kinds:
    - in_process: the TF2 signature, TensorFlow's default threads;
    - session: in a Session configured as the server's (one intra-op thread, ops on the
      calling thread), which is what a served request runs;
    - handled_session: the same Session call, timed alone, with the stand-in server's
      handling of a request around it as a served request's thread does it (the request's
      bytes parsed and validated before, the response built and serialized after), without
      gRPC or a client. Against `session` it shows what the Python between calls costs the
      model's own time (the caches it takes over); TF Serving's C++ does far less there.
    The models take turns in blocks of `block` calls (the first 20 of a block warm the
    caches up, as a server's steady stream of calls to its one model keeps them), `rounds`
    times, so that both see the same drift of the machine."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from animerec.serving import client, predict, versions

    def session(loaded):
        def call(user: np.ndarray, _) -> float:
            start = time.perf_counter()
            loaded.run(f.DEFAULT_SIGNATURE, {f.SERVING_USER_ID: user})
            return time.perf_counter() - start

        return call

    def handled_session(loaded):
        def call(_, body: bytes) -> float:
            request = predict_pb2.PredictRequest.FromString(body)
            name, inputs = predict.validate_predict(loaded, request)
            start = time.perf_counter()
            outputs = loaded.run(name, inputs)
            elapsed = time.perf_counter() - start
            predict.build_response(loaded, request, name, outputs).SerializeToString()
            return elapsed

        return call

    def in_process(signature):
        def call(user: np.ndarray, _) -> float:
            start = time.perf_counter()
            signature(user_id=tf.constant(user))
            return time.perf_counter() - start

        return call

    callers = {}
    for name, model_dir in model_dirs.items():
        loaded = versions.load_version(os.path.dirname(model_dir), int(os.path.basename(model_dir)))
        callers[name] = {
            "in_process": in_process(tf.saved_model.load(model_dir).signatures[f.DEFAULT_SIGNATURE]),
            "session": session(loaded),
            "handled_session": handled_session(loaded),
        }
    rng = np.random.default_rng(1)
    times = {name: {kind: [] for kind in kinds} for name, kinds in callers.items()}
    for _ in range(rounds):
        for name, kinds in callers.items():
            for kind, call in kinds.items():
                # A new user each call; for the handled calls its request's bytes are made
                # ahead (a client's work, not the server's).
                picks = rng.integers(0, users, block)
                bodies = [
                    client.make_request(*client.by_user_inputs([int(u)])).SerializeToString()
                    if kind == "handled_session"
                    else None
                    for u in picks
                ]
                for i, (user, body) in enumerate(zip(picks, bodies)):
                    elapsed = call(np.array([user], np.int64), body)
                    if i >= 20:
                        times[name][kind].append(elapsed)
    out = {}
    for name, kinds in times.items():
        out[name] = {}
        for kind, values in kinds.items():
            out[name][f"{kind}_ms"] = round(float(np.median(values)) * 1000, 3)
            out[name][f"{kind}_p99_ms"] = round(float(np.percentile(values, 99)) * 1000, 3)
    return out


def _overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top titles that `found` has."""
    return round(float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)])), 4)


def _median_ms(call, args: list) -> float:
    times = []
    for i, arg in enumerate(args):
        start = time.perf_counter()
        call(arg)
        if i >= 20:  # the first calls warm the caches up
            times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 3)


def _scann_row(titles, build_s, k, overlap, scann_ms, brute_ms, what, brute_what, progress) -> dict:
    progress(
        f"{titles:,} titles ({what}): top-{k} overlap {overlap:.4f}; one call {scann_ms:.3f} ms with ScaNN, "
        f"{brute_ms:.3f} ms brute force ({brute_what}, in-process); index built in {build_s:.1f}s"
    )
    return {
        "titles": titles,
        "build_s": round(build_s, 1),
        f"overlap@{k}": overlap,
        "scann_ms": scann_ms,
        "brute_force_ms": brute_ms,
    }


def bench_scann(
    model_dir: str, users: int, k: int = 50, sample: int = 1000, big_catalog: int = 1_000_000, progress=print
) -> dict:
    """ScaNN's top-k overlap with brute force and its speed, one user a call: on the bench's
    retrieval-only model (its untrained towers give nearly uniform directions, an index's
    hardest case; seen titles excluded, as served), against the SavedModel's `recommend`
    in a Session, as the server runs it (`model_dir`: a version's folder); and over
    `big_catalog` generated titles (clustered, as catalogs are), against a numpy product
    and top-k (none: 0)."""
    from animerec.serving import scann_index, versions

    out = {}
    start = time.time()
    index = scann_index.ScannRetrieval(model_dir)
    build_s = time.time() - start
    loaded = versions.load_version(os.path.dirname(model_dir), int(os.path.basename(model_dir)))

    def recommend(users: np.ndarray, k: np.ndarray, exclude: np.ndarray) -> dict:
        inputs = {f.SERVING_USER_ID: users, f.SERVING_K: k, f.SERVING_EXCLUDE: exclude}
        return loaded.run(f.RECOMMEND_SIGNATURE, inputs)

    rng = np.random.default_rng(2)
    chosen = rng.integers(0, users, sample).astype(np.int64)
    none = np.full((sample, 1), -1, np.int64)
    exact = recommend(chosen, np.full(sample, k, np.int32), none)
    found = index.top(chosen, np.full(sample, k), k, none)
    overlap = _overlap(found[f.OUTPUT_ANIME_IDS], exact[f.OUTPUT_ANIME_IDS][:, :k])
    one = [(np.array([u], np.int64), np.array([k], np.int32), np.full((1, 1), -1, np.int64)) for u in chosen[:300]]
    scann_ms = _median_ms(lambda a: index.top(a[0], a[1], k, a[2]), one)
    brute_ms = _median_ms(lambda a: recommend(*a), one)
    out[str(index.catalog_size)] = _scann_row(
        index.catalog_size,
        build_s,
        k,
        overlap,
        scann_ms,
        brute_ms,
        "the model, seen excluded",
        "the SavedModel in a Session",
        progress,
    )
    if not big_catalog:
        return out
    dim = 65  # the model's 64 and the bias
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    database = centers[rng.integers(0, len(centers), big_catalog)]
    database += 0.5 * rng.normal(size=database.shape).astype(np.float32)
    queries = centers[rng.integers(0, len(centers), 300)] + 0.5 * rng.normal(size=(300, dim)).astype(np.float32)
    start = time.time()
    searcher = scann_index.build_searcher(database)
    build_s = time.time() - start

    def brute(q):
        scores = database @ q
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])]

    exact = np.stack([brute(q) for q in queries])
    found, _ = scann_index.search(searcher, queries, k, big_catalog)
    overlap = _overlap(found, exact)
    scann_ms = _median_ms(lambda q: scann_index.search(searcher, q[None, :], k, big_catalog), list(queries))
    brute_ms = _median_ms(brute, list(queries[:100]))
    out[str(big_catalog)] = _scann_row(
        big_catalog, build_s, k, overlap, scann_ms, brute_ms, "generated, clustered", "numpy", progress
    )
    return out


def bench_serve(
    users: int = 325_000,
    anime: int = 17_500,
    dim: int = 64,
    history: int = 100,
    seen: int = 300,
    seconds: float = 10.0,
    levels: tuple[int, ...] = (1, 4, 16),
    scann_titles: int = 1_000_000,
    progress=print,
) -> dict:
    """Both serving models, back to back in one run: both built first, so that no build (a
    minute for the two stages) separates their levels; then retrieval alone and the two
    stages, each served and driven by 1, 4 and 16 clients; each served with a ScaNN index
    for retrieval, and ScaNN against brute force (bench_scann); one client alternating
    between both models' servers; then both models alone, called in turn."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for name, second_stage in (("retrieval only", False), ("two stages", True)):
            model_dirs[name], out[name] = _build(
                os.path.join(tmp, name.replace(" ", "_")), users, anime, dim, history, seen, second_stage, progress
            )
        for name, model_dir in model_dirs.items():
            progress(f"== {name}")
            out[name].update(_drive_one_model(os.path.dirname(model_dir), users, seconds, levels, progress))
        for name in model_dirs:
            progress(f"== {name}, served with --index scann")
            out[f"{name}, ScaNN"] = {
                "levels": serve_and_drive(
                    os.path.dirname(model_dirs[name]), users, seconds, levels, progress, ("--index", f.SCANN_INDEX)
                )
            }
        progress("== ScaNN against brute force")
        out["scann"] = bench_scann(model_dirs["retrieval only"], users, big_catalog=scann_titles, progress=progress)
        # The ranking stage's budget is set on this p99: 30 blocks a model (about 15,000
        # requests at 10 s a level) make it a steadier estimate than one level's.
        progress(f"== one client, both models served at once, alternating blocks of 1 s for {6 * seconds:g} s")
        both = alternating(
            {name: os.path.dirname(path) for name, path in model_dirs.items()}, users, 6 * seconds, progress
        )
        out["one client, alternating"] = both
        interval = both["two stages"]["rise_interval_ms"]
        progress(
            "the second stage adds "
            + ", ".join(
                f"{both['two stages'][f'{q}_ms'] - both['retrieval only'][f'{q}_ms']:.2f} ms at {q} "
                f"(90% interval over the run's rounds: {interval[q][0]:.2f} to {interval[q][1]:.2f})"
                for q in ("p50", "p99")
            )
        )
        progress("== each model alone, one user a call, the models in turns of 250 calls")
        alone = model_only_ms(model_dirs, users)
        for name, figures in alone.items():
            out[name].update(figures)
            one_client = out[name]["levels"][0]["p50_ms"] if out[name]["levels"] else float("nan")
            rest = one_client - figures["session_ms"]
            floor = out[name]["grpc_floor"]["p50_ms"]
            progress(
                f"{name}: {figures['in_process_ms']:.2f} ms in-process, {figures['session_ms']:.2f} ms in the "
                f"server's Session (p99 {figures['session_p99_ms']:.2f}), {figures['handled_session_ms']:.2f} "
                f"(p99 {figures['handled_session_p99_ms']:.2f}) with the stand-in's request handling around "
                f"each call; the rest of a served request at 1 client (p50): {rest:.2f} ms, of which "
                f"{floor:.2f} ms the gRPC floor and {rest - floor:.2f} ms the stand-in's own work"
            )
        two, first = alone["two stages"], alone["retrieval only"]
        progress(
            "the second stage adds, to the model alone, "
            + "; ".join(
                f"{what}: {two[f'{kind}_ms'] - first[f'{kind}_ms']:.2f} ms at p50, "
                f"{two[f'{kind}_p99_ms'] - first[f'{kind}_p99_ms']:.2f} at p99"
                for kind, what in (
                    ("in_process", "in-process"),
                    ("session", "in the Session"),
                    ("handled_session", "in the Session with request handling around it"),
                )
            )
        )
    return out


def _build(serving_dir, users, anime, dim, history, seen, second_stage, progress) -> tuple[str, dict]:
    """Builds one model under serving_dir; returns its version folder and size."""
    start = time.time()
    model_dir = build_serving_model(serving_dir, users, anime, dim, history, seen, second_stage)
    size_mb = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(model_dir) for n in ns) / 1e6
    what = "two-stage" if second_stage else "retrieval-only"
    progress(
        f"Built a {users:,}-user, {anime:,}-anime, dim-{dim} {what} model ({size_mb:,.0f} MB) "
        f"in {time.time() - start:.0f}s"
    )
    return model_dir, {"size_mb": round(size_mb)}


def _drive_one_model(serving_dir, users, seconds, levels, progress) -> dict:
    """Serves the model under serving_dir and drives it, then the gRPC floor for its response."""
    responses: list = []
    results = serve_and_drive(serving_dir, users, seconds, levels, progress, responses=responses)
    progress("  the gRPC floor (a server answering with the same response's bytes, no model):")
    return {"levels": results, "grpc_floor": grpc_floor(responses[0], users, seconds, progress)}


def alternating(serving_dirs: dict[str, str], users: int, seconds: float, progress, block: float = 1.0) -> dict:
    """One client against each model's server, both running, in alternating blocks of
    `block` seconds for `seconds` in all: the machine's drift over a run reaches both
    alike, so their difference at p50 and p99 is the second stage's (bench serve's levels
    run one model after the other)."""
    from animerec.serving.client import RecommenderClient

    servers, clients = [], {}
    try:
        for name, serving_dir in serving_dirs.items():
            server, target = _start_server(_serve_command(serving_dir), users)
            servers.append(server)
            clients[name] = RecommenderClient(target, timeout=10)
        rng = np.random.default_rng(3)
        rounds: dict[str, list[list[float]]] = {name: [] for name in clients}
        for _ in range(max(1, int(seconds / block / len(clients)))):
            for name, client in clients.items():
                rounds[name].append([])
                end = time.perf_counter() + block
                while time.perf_counter() < end:
                    request = client.request([int(rng.integers(0, users))])
                    start = time.perf_counter()
                    client.stub.Predict(request, timeout=10)
                    rounds[name][-1].append(time.perf_counter() - start)
    finally:
        for client in clients.values():
            client.close()
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    out = {name: latency_figures([s for r in values for s in r]) for name, values in rounds.items()}
    for name, figures in out.items():
        progress(
            f"{name}: {figures['requests']} requests, p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
        )
    # Against the first model: each other model's rise, with its interval over the rounds.
    names = list(rounds)
    for name in names[1:]:
        out[name]["rise_interval_ms"] = {f"p{q}": rise_interval(rounds[names[0]], rounds[name], q) for q in (50, 99)}
    return out


def _serve_command(serving_dir: str) -> list:
    return [sys.executable, "-m", "animerec.cli", "serve", "--model-dir", serving_dir, "--rest-port", "0"]


def serve_and_drive(serving_dir, users, seconds, levels, progress, serve_args=(), responses=None) -> list:
    """`animerec serve` on serving_dir in its own process, driven by each level of clients
    (one serialized response, to a request for one user, is appended to `responses`)."""
    return _drive_server(_serve_command(serving_dir) + list(serve_args), users, seconds, levels, progress, responses)


def canned_server(port: int, response_path: str, workers: int = 8) -> None:
    """A gRPC server that answers every Predict with the bytes in response_path: Python's
    gRPC on both sides and the response's size, without validation, batching or a model
    (the transport's floor under the stand-in)."""
    import concurrent.futures

    import grpc

    with open(response_path, "rb") as fh:
        body = fh.read()
    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(lambda *_: body)}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def grpc_floor(response: bytes, users: int, seconds: float, progress) -> dict:
    """One client, as `drive` runs it, against canned_server answering with `response`."""
    with tempfile.NamedTemporaryFile(suffix=".pb") as fh:
        fh.write(response)
        fh.flush()
        code = (
            f"import sys; from animerec.bench.serve import canned_server; canned_server(int(sys.argv[2]), {fh.name!r})"
        )
        (result,) = _drive_server([sys.executable, "-c", code], users, seconds, (1,), progress, None)
    return result


def _start_server(command: list, users: int) -> tuple[subprocess.Popen, str]:
    """Starts `command` + ["--port", PORT], waits until it answers and warms it up."""
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    server = subprocess.Popen(
        command + ["--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = f"localhost:{port}"
    try:
        _wait_for_server(target)
        drive(target, 1, 2.0, users)  # warm-up
    except BaseException:
        server.terminate()
        server.wait(timeout=30)
        raise
    return server, target


def _drive_server(command: list, users, seconds, levels, progress, responses) -> list:
    """Starts `command` + ["--port", PORT] and drives it with each level of clients."""
    server, target = _start_server(command, users)
    try:
        results = []
        for clients in levels:
            result = drive(target, clients, seconds, users)
            results.append(result)
            progress(
                f"{clients:>3} clients: {result['qps']:>8.1f} req/s  p50 {result['p50_ms']:.2f} ms  "
                f"p95 {result['p95_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  errors {result['errors']}"
            )
        if responses is not None:
            from animerec.serving.client import RecommenderClient

            client = RecommenderClient(target)
            responses.append(client.stub.Predict(client.request([0]), timeout=10).SerializeToString())
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main(args) -> int:
    result = bench_serve(
        users=args.users,
        anime=args.anime,
        dim=args.dim,
        seconds=args.seconds,
        levels=tuple(args.levels),
        scann_titles=args.scann_titles,
        progress=(lambda _: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result))
    return 0
