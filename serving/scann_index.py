"""Known users' retrieval from a ScaNN index (`animerec serve --index scann`,
`animerec batch-recommend --index scann`), the third retrieval method of the design.

The SavedModel that stock TF Serving loads stays brute force: one [batch, dim] x
[dim, catalog] product a request. Here the same arrays, read from the version's
checkpoint, answer `serving_default` and `recommend` instead: each title is indexed as
[embedding, bias] and each user's query as [embedding, 1], so ScaNN's dot product is the
model's score; ScaNN returns the user's nearest width + (titles excluded) titles,
rescored exactly, and the excluded ones (seen, held out, asked) are dropped. Users
without a history get the popularity order, as in the SavedModel. The other signatures
(new users from their liked list, tf.Examples, the Evaluator's) stay on the Session.

For a model with a second stage, the index finds each user's best max(width, N) unseen
titles and the SavedModel's `rank_retrieved` (a saved function, not a signature: stock
TF Serving neither sees nor needs it) runs the second stage on them: the same item-item
candidates, features and ranker as `recommend`, without the product with the whole
catalog. That function runs in the Session that holds the version for its signatures,
as a callable of its own (saved_function): no second copy of the model.
"""

from __future__ import annotations

import os

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.ops import gen_functional_ops

from animerec import features as f
from animerec.ids import positions_in
from animerec.serving.batching import RequestError

# The signatures an index answers; width: their outputs' columns.
SIGNATURES = (f.DEFAULT_SIGNATURE, f.RECOMMEND_SIGNATURE)
# ScaNN's rules of thumb (scann/docs/algorithms.md): below about 20k points, score every
# point exactly; below about 100k, score them all with asymmetric hashing (AH), then
# rescore the best exactly; above, a tree first narrows the scan to some of its leaves
# (about sqrt(n) of them). Rescoring covers REORDER_FACTOR x asked, and
# `animerec bench serve` reports the top-50 overlap with brute force these give.
EXACT_BELOW = 20_000
PARTITION_FROM = 100_000
LEAVES_SEARCHED = 0.1
REORDER_FACTOR = 10


def _variable(reader, name: str) -> np.ndarray:
    return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def is_exact(n: int, exact_below: int = EXACT_BELOW) -> bool:
    """Whether build_searcher scores all of `n` titles exactly."""
    return n < exact_below


def build_searcher(database: np.ndarray, exact_below: int = EXACT_BELOW, partition_from: int = PARTITION_FROM):
    """A ScaNN dot-product searcher over `database` ([n, dim] float32)."""
    from scann.scann_ops.py import scann_ops_pybind

    n = len(database)
    builder = scann_ops_pybind.builder(database, 10, "dot_product")
    if is_exact(n, exact_below):
        return builder.score_brute_force().build()
    if n >= partition_from:
        leaves = int(np.sqrt(n))
        builder = builder.tree(
            num_leaves=leaves,
            num_leaves_to_search=max(1, int(leaves * LEAVES_SEARCHED)),
            training_sample_size=min(n, 250_000),
        )
    return builder.score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build()


def search(
    searcher, queries: np.ndarray, wanted: int, catalog_size: int, excluded: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The `wanted` + `excluded` best titles of each query ([batch, wanted + excluded]
    positions, exact scores), for the `wanted` best once up to `excluded` are dropped. The
    rescoring covers REORDER_FACTOR x wanted beyond the excluded: those are among the
    candidates anyway, and what rescoring corrects is the hashing's order of the rest."""
    final = min(wanted + excluded, catalog_size)
    return searcher.search_batched(
        queries,
        final_num_neighbors=final,
        pre_reorder_num_neighbors=min(catalog_size, excluded + REORDER_FACTOR * wanted),
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """The SavedModel proto (saved_model.pb) of the SavedModel at `path`."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as fh:
        saved_model.ParseFromString(fh.read())
    return saved_model


def saved_function(session, saved_model: saved_model_pb2.SavedModel, name: str):
    """The function a SavedModel saves as its root's attribute `name` (a tf.function with
    an input signature, not a serving signature), run in `session`, which holds that
    SavedModel's graph as TF Serving loads it: a callable from numpy arguments (in the
    input signature's order and dtypes) to its outputs by name.

    The graph already holds the function (in its library) and every variable and table
    it reads; what it lacks is a call. The call's captured inputs are wired as the
    signatures' calls wire the same objects, and a variable no signature reads is found
    by its name. In the Session the call runs on the server's threads and settings, and
    the model is not loaded a second time (tf.saved_model.load's copy ran the same
    function 0.46 ms slower a request, in TensorFlow's eager runtime)."""
    graph = session.graph
    meta_graph = saved_model.meta_graphs[0]
    objects = meta_graph.object_graph_def
    children = {child.local_name: child.node_id for child in objects.nodes[0].children}
    if name not in children or objects.nodes[children[name]].WhichOneof("kind") != "function":
        raise ValueError(f"the SavedModel saves no function {name!r}")
    concrete_names = list(objects.nodes[children[name]].function.concrete_functions)
    if len(concrete_names) != 1:
        raise ValueError(f"{name} has {len(concrete_names)} traces; a saved function with an input signature has one")
    function_name = concrete_names[0]
    function = objects.concrete_functions[function_name]
    # The tensors each object is captured as, from the calls the graph has (the signatures').
    calls = {
        _text(op.get_attr("f").name): op
        for op in graph.get_operations()
        if op.type in ("StatefulPartitionedCall", "PartitionedCall")
    }
    captured = {}
    for called, concrete in objects.concrete_functions.items():
        op = calls.get(called)
        if op is not None and concrete.bound_inputs:
            own = len(op.inputs) - len(concrete.bound_inputs)
            for node, tensor in zip(concrete.bound_inputs, list(op.inputs)[own:]):
                captured.setdefault(node, tensor)
    handles = {}
    for op in graph.get_operations():
        if op.type == "VarHandleOp":
            handles.setdefault(_text(op.get_attr("shared_name")), []).append(op)
    inputs = []
    for node in function.bound_inputs:
        if node not in captured:
            proto = objects.nodes[node]
            found = handles.get(proto.variable.name, []) if proto.WhichOneof("kind") == "variable" else []
            if len(found) != 1:
                raise ValueError(f"{name} reads an object (node {node} of the SavedModel) no signature reads")
            captured[node] = found[0].outputs[0]
        inputs.append(captured[node])
    definition = next(fn for fn in meta_graph.graph_def.library.function if fn.signature.name == function_name)
    own = len(definition.signature.input_arg) - len(inputs)
    with graph.as_default(), tf.name_scope(name):
        feeds = [tf.compat.v1.placeholder(tf.dtypes.as_dtype(arg.type)) for arg in definition.signature.input_arg[:own]]
        outputs = gen_functional_ops.stateful_partitioned_call(
            args=feeds + inputs,
            Tout=[tf.dtypes.as_dtype(arg.type) for arg in definition.signature.output_arg],
            f=function_name,
        )
    # A dict of outputs is flattened in its keys' order.
    keys = sorted(function.output_signature.dict_value.fields)
    if len(keys) != len(outputs):
        raise ValueError(f"{name} must return a dict of tensors; its outputs are {function.output_signature}")
    from animerec.serving.versions import session_callable

    run = session_callable(session, [t.name for t in feeds], [t.name for t in outputs])
    return lambda *arguments: dict(zip(keys, run(*arguments)))


class ScannRetrieval:
    """A SavedModel's known-user recommendations from a ScaNN index (and its second stage, if it has one)."""

    def __init__(self, path: str, session=None, **searcher_options):
        """session: a Session holding the SavedModel's graph (the server's), where its second
        stage runs (None: one is loaded for it). searcher_options: build_searcher's
        thresholds (tests reach its paths on small catalogs)."""
        reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
        if not reader.has_tensor("known_user_rows/.ATTRIBUTES/VARIABLE_VALUE"):
            raise ValueError(f"{path}: this model does not list its users' rows (exported before ScaNN); retrain it")
        saved_model = read_saved_model(path)
        # A second stage: N, and the function that ranks what the index retrieves.
        self.ranking_candidates, self.rank_retrieved, self.session = 0, None, session
        if reader.has_tensor("liked_splits/.ATTRIBUTES/VARIABLE_VALUE"):
            if not reader.has_tensor("ranking_candidates/.ATTRIBUTES/VARIABLE_VALUE"):
                raise ValueError(
                    f"{path}: this two-stage model was exported before ScaNN could serve its second stage; "
                    "retrain it, or serve it with --index brute_force"
                )
            self.ranking_candidates = int(_variable(reader, "ranking_candidates"))
            if self.session is None:
                from animerec.serving.versions import load_session

                self.session, _ = load_session(path)
            self.rank_retrieved = saved_function(self.session, saved_model, "rank_retrieved")
        self.catalog = np.ascontiguousarray(_variable(reader, "catalog_embeddings_t").T)
        self.bias = _variable(reader, "catalog_bias")
        self.anime_ids = _variable(reader, "catalog_anime_ids")
        self.titles = _variable(reader, "catalog_titles")
        self.genres = _variable(reader, "catalog_genres")
        self.user_embeddings = _variable(reader, "user_embeddings")
        self.has_history = _variable(reader, "has_history")
        self.empty_row = len(self.user_embeddings) - 1
        self.seen = (_variable(reader, "seen_splits"), _variable(reader, "seen_values"))
        self.heldout = (_variable(reader, "heldout_splits"), _variable(reader, "heldout_values"))
        ids, rows = _variable(reader, "known_user_ids"), _variable(reader, "known_user_rows")
        order = np.argsort(ids, kind="stable")
        self._user_ids, self._user_rows = ids[order], rows[order]
        order = np.argsort(self.anime_ids, kind="stable")
        self._anime_ids_sorted, self._anime_positions = self.anime_ids[order], order.astype(np.int64)
        self.popularity = _variable(reader, "popularity")
        self.popular = np.argsort(-self.popularity, kind="stable")
        database = np.concatenate([self.catalog, self.bias[:, None]], axis=1).astype(np.float32)
        self.searcher = build_searcher(database, **searcher_options)
        self.exact = is_exact(len(database), searcher_options.get("exact_below", EXACT_BELOW))
        # recommend's width (its largest k), from the SavedModel's signature definitions.
        signature = saved_model.meta_graphs[0].signature_def[f.RECOMMEND_SIGNATURE]
        self.recommend_width = signature.outputs[f.OUTPUT_ANIME_IDS].tensor_shape.dim[1].size

    @property
    def catalog_size(self) -> int:
        return len(self.anime_ids)

    def _lookup(self, keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        """values[i] where keys[i] == query (keys sorted), -1 where absent."""
        at = positions_in(keys, query)
        return np.where(at >= 0, values[at], -1) if len(keys) else np.full(np.shape(query), -1)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return self._lookup(self._user_ids, self._user_rows, user_ids)

    def positions(self, anime_ids: np.ndarray) -> np.ndarray:
        return self._lookup(self._anime_ids_sorted, self._anime_positions, anime_ids)

    def top(self, user_ids: np.ndarray, k: np.ndarray, width: int, exclude_anime_ids: np.ndarray | None) -> dict:
        """The outputs of the `recommend` signature (row b: the top k[b] unseen titles of
        user_ids[b] in `width` columns, -1 / -inf / "" beyond), from the index (and, for a
        two-stage model, the SavedModel's second stage on what it retrieves)."""
        user_ids = np.asarray(user_ids, np.int64).reshape(-1)
        batch = len(user_ids)
        if batch == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "user_id must hold at least one id")
        k = np.clip(np.asarray(k, np.int64).reshape(-1), 0, width)
        if len(k) != batch or (exclude_anime_ids is not None and len(exclude_anime_ids) != batch):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"every input needs as many rows as {f.SERVING_USER_ID} ({batch})"
            )
        rows = self.user_rows(user_ids)
        rows = np.where(rows >= 0, rows, self.empty_row)
        use_model = self.has_history[rows]
        if self.rank_retrieved is None:
            positions, scores = self._retrieve(rows, use_model, exclude_anime_ids, width)
            valid = (positions >= 0) & (np.arange(width)[None, :] < k[:, None])
            at = np.maximum(positions, 0)
            return {
                f.OUTPUT_ANIME_IDS: np.where(valid, self.anime_ids[at], -1),
                f.OUTPUT_SCORES: np.where(valid, scores, -np.inf).astype(np.float32),
                f.OUTPUT_TITLES: np.where(valid, self.titles[at], b"").astype(object),
                f.OUTPUT_GENRES: np.where(valid, self.genres[at], b"").astype(object),
                f.OUTPUT_IS_FALLBACK: ~use_model,
            }
        retrieved, _ = self._retrieve(rows, use_model, exclude_anime_ids, max(width, self.ranking_candidates))
        if exclude_anime_ids is None:
            exclude_anime_ids = np.full((batch, 1), -1, np.int64)
        return self.rank_retrieved(
            user_ids,
            k.astype(np.int32),
            np.asarray(exclude_anime_ids, np.int64),
            retrieved.astype(np.int32),
            np.int32(width),
            np.bool_(self.exact),
        )

    def _retrieve(
        self, rows: np.ndarray, use_model: np.ndarray, exclude_anime_ids: np.ndarray | None, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each user's best `width` titles not excluded (seen, held out, asked): catalog
        positions and scores, -1 / -inf padded; from the index for users with a query
        embedding, by popularity for the others."""
        batch = len(rows)
        asked = self.positions(np.asarray(exclude_anime_ids, np.int64)) if exclude_anime_ids is not None else None
        # Row b's excluded titles, marked on a [batch, catalog] map (a title given twice is marked once).
        excluded = np.zeros((batch, self.catalog_size), bool)
        for b, row in enumerate(rows):
            for splits, values in (self.seen, self.heldout):
                excluded[b, values[splits[row] : splits[row + 1]]] = True
            if asked is not None:
                excluded[b, asked[b][asked[b] >= 0]] = True
        counts = excluded.sum(axis=1)
        positions = np.full((batch, width), -1, np.int64)
        scores = np.full((batch, width), -np.inf, np.float32)
        model_rows = np.flatnonzero(use_model)
        if len(model_rows):
            queries = np.concatenate(
                [self.user_embeddings[rows[model_rows]], np.ones((len(model_rows), 1), np.float32)], axis=1
            )
            found, found_scores = search(
                self.searcher, queries, width, self.catalog_size, int(counts[model_rows].max())
            )
            for i, b in enumerate(model_rows):
                keep = ~excluded[b, found[i]]
                top = found[i][keep][:width]
                positions[b, : len(top)], scores[b, : len(top)] = top, found_scores[i][keep][:width]
        for b in np.flatnonzero(~use_model):
            top = self.popular[~excluded[b, self.popular]][:width]
            positions[b, : len(top)], scores[b, : len(top)] = top, self.popularity[top]
        return positions, scores

    def run(self, name: str, inputs: dict, width: int) -> dict:
        """Signature `name` (one of SIGNATURES) on its input arrays, in `width` columns."""
        users = inputs[f.SERVING_USER_ID]
        if name == f.DEFAULT_SIGNATURE:
            return self.top(users, np.full(len(users), width), width, None)
        return self.top(users, inputs[f.SERVING_K], width, inputs[f.SERVING_EXCLUDE])
