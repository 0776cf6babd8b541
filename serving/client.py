"""A TF Serving gRPC client (PredictionServiceStub) for the recommender signatures.

It speaks only TF Serving's public API, so the same code talks to
tensorflow/serving in production and to animerec's stand-in server here.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from animerec import features as f

DEFAULT_MODEL_NAME = f.MODEL_NAME
# The user_id of results for a user given by their liked titles.
NEW_USER = -1


@dataclasses.dataclass
class Recommendation:
    anime_id: int
    title: str
    genres: str
    score: float


@dataclasses.dataclass
class UserRecommendations:
    user_id: int
    is_fallback: bool
    items: list
    # The outputs' width: the most titles the model answers a request (its max_k, or its
    # top_k for serving_default).
    slots: int = 0


class RecommenderClient:
    def __init__(self, target: str, model_name: str = DEFAULT_MODEL_NAME, timeout: float = 10.0):
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name = model_name
        self.timeout = timeout

    def _request(self, signature: str, inputs: dict) -> predict_pb2.PredictRequest:
        return make_request(signature, inputs, self.model_name)

    def request(self, user_ids, k: int | None = None, exclude_anime_ids=None) -> predict_pb2.PredictRequest:
        """serving_default when only users are given, the `recommend` signature with k or exclusions."""
        return self._request(*by_user_inputs(user_ids, k, exclude_anime_ids))

    def recommend(self, user_ids, k: int | None = None, exclude_anime_ids=None) -> list[UserRecommendations]:
        response = self.stub.Predict(self.request(user_ids, k, exclude_anime_ids), timeout=self.timeout)
        return parse_response(response, user_ids)

    def from_liked_request(self, liked, k: int = f.DEFAULT_K, exclude_anime_ids=None) -> predict_pb2.PredictRequest:
        """The recommend_from_liked signature: one row of liked anime ids per new user."""
        return self._request(*from_liked_inputs(liked, k, exclude_anime_ids))

    def recommend_from_liked(self, liked, k: int = f.DEFAULT_K, exclude_anime_ids=None) -> list[UserRecommendations]:
        """Top k for users the model may not know, from their liked anime ids (user_id -1)."""
        response = self.stub.Predict(self.from_liked_request(liked, k, exclude_anime_ids), timeout=self.timeout)
        return parse_response(response, [NEW_USER] * len(liked))

    def close(self) -> None:
        self.channel.close()


def make_request(signature: str, inputs: dict, model_name: str = DEFAULT_MODEL_NAME) -> predict_pb2.PredictRequest:
    """The PredictRequest for `signature` of `model_name` with `inputs` (alias -> array)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def by_user_inputs(user_ids, k: int | None = None, exclude_anime_ids=None) -> tuple[str, dict]:
    """The signature and input arrays for known users: serving_default when only users are
    given, `recommend` with k or exclusions (k per user: every input has a batch dimension,
    as TF Serving's batching needs)."""
    users = np.asarray(user_ids, dtype=np.int64)
    if k is None and exclude_anime_ids is None:
        return f.DEFAULT_SIGNATURE, {f.SERVING_USER_ID: users}
    return f.RECOMMEND_SIGNATURE, {
        f.SERVING_USER_ID: users,
        f.SERVING_K: np.full(len(users), k if k is not None else 10, np.int32),
        f.SERVING_EXCLUDE: _pad(exclude_anime_ids or [[] for _ in users], len(users)),
    }


def from_liked_inputs(liked, k: int = f.DEFAULT_K, exclude_anime_ids=None) -> tuple[str, dict]:
    """The signature and input arrays for new users: one row of liked anime ids each."""
    return f.FROM_LIKED_SIGNATURE, {
        f.SERVING_LIKED: _pad(liked, len(liked)),
        f.SERVING_K: np.full(len(liked), k, np.int32),
        f.SERVING_EXCLUDE: _pad(exclude_anime_ids or [[] for _ in liked], len(liked)),
    }


def _pad(rows, n_users: int) -> np.ndarray:
    """The rows as a -1 padded matrix whose first column is -1: TF Serving's batching pads a
    request's tensor with its first element, so the padding it adds is -1 (no exclusion) too."""
    if len(rows) != n_users:
        raise ValueError(f"exclude_anime_ids has {len(rows)} rows for {n_users} users")
    width = max((len(r) for r in rows), default=0)
    out = np.full((n_users, width + 1), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, 1 : len(row) + 1] = row
    return out


def parse_response(response, user_ids) -> list[UserRecommendations]:
    return _results({k: tf.make_ndarray(v) for k, v in response.outputs.items()}, user_ids)


def _results(outputs: dict, user_ids) -> list[UserRecommendations]:
    """The recommendations of each row of a signature's outputs (padding left out)."""
    # float32, as the signature outputs them (REST writes each with six or nine digits).
    ids, scores = np.asarray(outputs[f.OUTPUT_ANIME_IDS]), np.asarray(outputs[f.OUTPUT_SCORES], np.float32)
    titles, genres, fallback = outputs[f.OUTPUT_TITLES], outputs[f.OUTPUT_GENRES], outputs[f.OUTPUT_IS_FALLBACK]
    results = []
    for row, user in enumerate(user_ids):
        items = [
            Recommendation(int(a), _text(t), _text(g), float(s))
            for a, t, g, s in zip(ids[row], titles[row], genres[row], scores[row])
            if a >= 0
        ]
        results.append(UserRecommendations(int(user), bool(fallback[row]), items, int(ids.shape[1])))
    return results


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RestError(Exception):
    """An error answer of TF Serving's REST API: its HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RestClient:
    """The same requests over TF Serving's REST API (port 8501), in the columnar format."""

    def __init__(self, url: str, model_name: str = DEFAULT_MODEL_NAME, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout

    def predict(self, signature: str, inputs: dict) -> dict:
        """POST /v1/models/{name}:predict; the outputs, or RestError."""
        body = json.dumps({"signature_name": signature, "inputs": inputs}).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/models/{self.model_name}:predict", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())["outputs"]
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = error.reason
            raise RestError(error.code, message) from None

    def recommend(self, user_ids, k: int | None = None, exclude_anime_ids=None) -> list[UserRecommendations]:
        signature, inputs = by_user_inputs(user_ids, k, exclude_anime_ids)
        return _results(self.predict(signature, {a: v.tolist() for a, v in inputs.items()}), user_ids)

    def recommend_from_liked(self, liked, k: int = f.DEFAULT_K, exclude_anime_ids=None) -> list[UserRecommendations]:
        signature, inputs = from_liked_inputs(liked, k, exclude_anime_ids)
        return _results(self.predict(signature, {a: v.tolist() for a, v in inputs.items()}), [NEW_USER] * len(liked))

    def close(self) -> None:
        pass


def format_recommendations(result: UserRecommendations) -> str:
    who = "a new user" if result.user_id == NEW_USER else f"user {result.user_id}"
    header = f"Top {len(result.items)} for {who}" + (
        " (unknown user or no history: most popular titles)" if result.is_fallback else ""
    )
    lines = [header, f"{'#':>3}  {'score':>7}  {'anime_id':>8}  title  [genres]"]
    for rank, item in enumerate(result.items, start=1):
        lines.append(f"{rank:>3}  {item.score:7.3f}  {item.anime_id:>8}  {item.title}  [{item.genres}]")
    return "\n".join(lines)
