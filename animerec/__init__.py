"""animerec: a TFX pipeline that trains and ships a two-tower anime recommender."""

import os

# TFRS 0.7 refuses Keras 3; every process that imports TensorFlow through this
# package (CLI, Beam workers, Trainer, tests, server) must see this first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
