"""Feature specification shared by every RGB-D segmentation builder (docs/method.md, Data).

An example holds ``image`` (uint8 H×W×3 RGB, PNG-encoded), ``depth`` (float32 H×W, metres,
0 = no reading) and ``label`` (uint8 H×W, 0 = void, 1..K as the dataset defines them). Depth and
label are zlib-compressed tensors, so encoding needs no TensorFlow.
Builders pass PIL images (or encoded PNG/JPEG bytes) for ``image``: a numpy array would need TF.
"""

from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds


def image_feature() -> tfds.features.Image:
    """RGB uint8 image of any size, stored as PNG."""
    return tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png")


def depth_feature() -> tfds.features.Tensor:
    """Depth map in metres, float32 H×W, zlib-compressed; 0 marks a pixel without a reading."""
    return tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib")


def label_feature(dtype: type = np.uint8) -> tfds.features.Tensor:
    """Label map as the dataset defines it (0 = void, 1..K), H×W, zlib-compressed.

    ``dtype`` is uint8 for K ≤ 255 (every config but NYUv2's 894 classes, which needs uint16).
    """
    return tfds.features.Tensor(shape=(None, None), dtype=dtype, encoding="zlib")


def rgbd_segmentation_features(
    extra: Mapping[str, tfds.features.FeatureConnector] | None = None,
    *,
    label_dtype: type = np.uint8,
) -> tfds.features.FeaturesDict:
    """The ``image`` / ``depth`` / ``label`` features, plus any dataset-specific ``extra`` ones."""
    features = {
        "image": image_feature(),
        "depth": depth_feature(),
        "label": label_feature(label_dtype),
    }
    if extra:
        overlap = set(extra) & set(features)
        if overlap:
            raise ValueError(f"extra features may not redefine {sorted(overlap)}")
        features.update(extra)
    return tfds.features.FeaturesDict(features)
