"""A few fixed validation images predicted after every epoch, for the image slider on MLflow's run page: the
same images at every step, so the model can be watched learning and runs compared image by image.

Few and small on purpose: EPOCH_IMAGES images at the working resolution (image, truth, prediction side by
side), a few forward passes and kilobytes per epoch."""

from __future__ import annotations

import re

import numpy as np

from segpipe.models.forward import predict_masks
from segpipe.reporting.overlay import side_by_side

EPOCH_IMAGES = 3
# Enlarged to about this height (nearest neighbour) so that a 32-pixel image stays readable; no more.
STRIP_HEIGHT = 96


def _host(array) -> np.ndarray:
    # A split that fit on the GPU holds tensors there.
    return array.cpu().numpy() if hasattr(array, "cpu") else np.asarray(array)


def image_key(sample_id: str) -> str:
    """An MLflow image key for a sample id: MLflow takes letters, digits and `_ - . /` and spaces only, and a
    photo's stem may be `IMG(1)` or `café`; the row's id stays readable, the rest becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", sample_id)


def epoch_strips(model, split, mean, std, runtime, count: int = EPOCH_IMAGES) -> dict[str, np.ndarray]:
    """{image key of a validation image: image | true mask | predicted mask} for the split's first `count` images."""
    rows = range(min(count, len(split)))
    images = [_host(split.image(i)) for i in rows]
    masks = predict_masks(model, images, mean, std, runtime)
    return {image_key(split.ids[i]): side_by_side(image, _host(split.mask(i)), mask, min_height=STRIP_HEIGHT)
            for i, image, mask in zip(rows, images, masks)}
