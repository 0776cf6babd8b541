"""The one place that names features, splits and vocabulary files.

Transform, Trainer, Evaluator, the serving signatures and the client import
these names; none of them types a feature name as a string literal.
"""

from animerec import __version__

# Raw features of the examples ExampleGen reads. Every record carries all of
# them so that the three splits share one dense schema: interaction records
# have empty text, catalog records have user_id = NO_USER.
USER_ID = "user_id"
ANIME_ID = "anime_id"
RATING = "rating"
LIKED = "liked"
NAME = "name"
GENRES = "genres"
SYNOPSIS = "synopsis"

RAW_INT_FEATURES = (USER_ID, ANIME_ID, RATING, LIKED)
RAW_TEXT_FEATURES = (NAME, GENRES, SYNOPSIS)
RAW_FEATURES = RAW_INT_FEATURES + RAW_TEXT_FEATURES
# Catalog metadata from MyAnimeList: on catalog records only, and only where known
# (zero or one value), so interaction records carry no bytes for them.
MAL_SCORE = "mal_score"  # float, MAL's mean score (1-10)
MEMBERS = "members"  # int, MAL users who list the title
RAW_CATALOG_FEATURES = (MAL_SCORE, MEMBERS)

NO_USER = -1  # user_id of a catalog record

# ExampleGen splits. The catalog is its own split so that retrieval ranks
# against every anime, not only those seen in one split.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
CATALOG_SPLIT = "catalog"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, CATALOG_SPLIT)

# Transform outputs.
USER_INDEX = "user_index"
ANIME_INDEX = "anime_index"
WEIGHT = "weight"
NAME_TOKENS = "name_tokens"
GENRE_TOKENS = "genre_tokens"
SYNOPSIS_TOKENS = "synopsis_tokens"
TEXT_TOKEN_FEATURES = {NAME: NAME_TOKENS, GENRES: GENRE_TOKENS, SYNOPSIS: SYNOPSIS_TOKENS}
# Token ids are vocabulary index + 1, padded to a fixed length with PAD_TOKEN (also OOV).
TEXT_MAX_TOKENS = {NAME_TOKENS: 8, GENRE_TOKENS: 8, SYNOPSIS_TOKENS: 48}
TEXT_VOCAB_SIZE = {NAME_TOKENS: 5000, GENRE_TOKENS: 100, SYNOPSIS_TOKENS: 10000}
PAD_TOKEN = 0

# Vocabulary files written by tf.Transform (frequency-sorted, most frequent first).
USER_VOCAB = "user_id_vocab"
ANIME_VOCAB = "anime_id_vocab"
TEXT_VOCAB = {NAME_TOKENS: "name_vocab", GENRE_TOKENS: "genre_vocab", SYNOPSIS_TOKENS: "synopsis_vocab"}

# The pipeline: its name in ML Metadata and Kubeflow (a local run and a compiled one keep
# one lineage of blessed models), and the image its Kubeflow tasks run by default
# (kubeflow/Dockerfile, tagged with the package's version).
PIPELINE_NAME = "animerec"
PIPELINE_IMAGE = f"animerec-pipeline:{__version__}"

# The served model: its name in TF Serving (models.config, clients), signatures and tensors.
MODEL_NAME = "animerec"
# TF Serving's default ports (--port, --rest_api_port): the stand-in's and the client's too.
GRPC_PORT = 8500
REST_PORT = 8501
# Titles the client (serving/client.py, `animerec recommend`) asks for when not told.
DEFAULT_K = 10
# How known users' top titles are found: the SavedModel's brute-force product (what stock
# TF Serving runs), or a ScaNN index over the same arrays (animerec.serving.scann_index).
BRUTE_FORCE_INDEX = "brute_force"
SCANN_INDEX = "scann"
RETRIEVAL_INDEXES = (BRUTE_FORCE_INDEX, SCANN_INDEX)
DEFAULT_SIGNATURE = "serving_default"
# TF Serving replays these PredictionLog records when it loads a version (SavedModel warmup).
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# The TrainingConfig that trained the model (JSON), shipped beside the warmup file (TF
# Serving reads nothing else there): the Evaluator tunes its EASE baseline on the same
# validation carve, and whoever promotes a model can see what trained it.
TRAINING_CONFIG_FILE = "assets.extra/animerec_training_config.json"
SERVING_EXAMPLES = "examples"
SERVING_LIKED = "liked_anime_ids"
SERVING_USER_ID = USER_ID
SERVING_K = "k"
SERVING_EXCLUDE = "exclude_anime_ids"
OUTPUT_ANIME_IDS = "anime_ids"
OUTPUT_SCORES = "scores"
OUTPUT_TITLES = "titles"
OUTPUT_GENRES = "genres"
OUTPUT_IS_FALLBACK = "is_fallback"
RECOMMEND_SIGNATURE = "recommend"
# Top k for a new user from their liked titles (the query tower runs at request time).
FROM_LIKED_SIGNATURE = "recommend_from_liked"
# Excludes training titles only, not those held out for eval: for the Evaluator.
EVAL_SIGNATURE = "recommend_for_eval"
# As EVAL_SIGNATURE, with the first stage (two-tower retrieval) alone: the Evaluator's ablation row.
EVAL_RETRIEVAL_SIGNATURE = "retrieve_for_eval"
TF_EXAMPLE_SIGNATURE = "serving_tf_example"


def transformed_name(key: str) -> str:
    """Name of a feature after Transform (the TFX template convention)."""
    return key + "_xf"
