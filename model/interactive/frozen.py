"""The frozen features of whole images, made once and reused: within one Learn (`FrozenImages`: every
image is predicted before the step and again after it) and across predictions and Learns of one model
(`FeatureStore`: the backbone and pixel decoder never change when steps are added, so the features of
an image predicted before Learn are the ones Learn needs)."""

from collections.abc import Sequence

import torch

from ..network.eclipse import EclipseModel, RawPrediction, to_chw_tensor
from ..network.outputs import Encoded
from ..network.postprocess import PanopticResult
from ..training.feature_cache import FeatureCache
from .examples import image_digest


class FeatureStore:
    """Frozen features of whole images by their pixels (`image_digest`), least recently used dropped
    beyond `budget_bytes`. Always with what dense heads read, so that any Learn can use them. Belongs
    to one model: clear it when the model is replaced."""

    def __init__(self, budget_bytes: int = 512 << 20):
        self._cache = FeatureCache(budget_bytes)

    def __len__(self) -> int:
        return len(self._cache)

    def encode(self, model: EclipseModel, image) -> Encoded:
        """`model.encode_images` of one image ([H,W], [H,W,3|4] or [3,H,W]), kept or made now."""
        def compute():
            # Plain tensors even inside a prediction's inference mode: Learn reads them later.
            with torch.inference_mode(False), torch.no_grad():
                return model.encode_images(to_chw_tensor(image)[None], dense=True)

        return self._cache.get(image_digest(image), compute)

    def clear(self) -> None:
        self._cache.clear()


class FrozenImages:
    """Images whose frozen features (backbone and pixel decoder) are made once and kept, up to a budget
    (beyond it they are made again when asked for): Learn predicts every image before the step and again
    after it, and the frozen part is most of a prediction's cost. `dense`: keep what dense heads read
    too (needed when the model has, or is about to get, a dense step). `store`: take the features from
    it (and leave them there) instead of encoding anew."""

    def __init__(self, model: EclipseModel, images: Sequence, budget_bytes: int = 1 << 30, dense: bool | None = None,
                 store: FeatureStore | None = None):
        self.images, self.encoded, self.store, kept = list(images), [], store, 0
        self.dense = model.needs_dense_inputs if dense is None else dense
        for image in self.images:
            encoded = self._encode(model, image)
            kept += encoded.nbytes
            self.encoded.append(encoded if kept <= budget_bytes else None)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def _encode(self, model, image) -> Encoded:
        if self.store is not None:
            return self.store.encode(model, image)
        return model.encode_images(to_chw_tensor(image)[None], dense=self.dense)

    def encode(self, model: EclipseModel, index: int) -> Encoded:
        """The frozen features of image `index` (kept, or made again)."""
        return self.encoded[index] or self._encode(model, self.images[index])

    @torch.no_grad()
    def infer(self, model: EclipseModel, index: int) -> RawPrediction:
        """The model's raw prediction of image `index`, as `model.infer` gives it."""
        encoded = self.encode(model, index)
        return model.infer_encoded(encoded)

    @torch.no_grad()
    def predict(self, model: EclipseModel, index: int) -> PanopticResult:
        return model.merge(self.infer(model, index))
