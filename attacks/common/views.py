"""The fixed view of generated images that the target sees: centre crop, then resize.

Plug & Play Attacks (Struppek et al., ICML 2022) crop the centre of the StyleGAN output (800 of
1024 px for FFHQ) and resize it to the target's input size (224 px) before every target query, in
the candidate search, during optimisation (followed by random augmentation) and in the final
selection. The reconstructions returned by the attacks are these views.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inversion_bench import augment
from inversion_bench.errors import ConfigError


@dataclass(frozen=True)
class FixedView:
    """Centre crop of ``center_crop`` pixels (None: none), then resize to ``resize`` (None: none).

    Args:
        center_crop: side of the centre crop in pixels of the generator output.
        resize: side of the output; None keeps the (cropped) size.
    """

    center_crop: int | None = None
    resize: int | None = None

    def check(self, resolution: int) -> None:
        """Raises ConfigError when the crop does not fit a ``resolution`` px generator output."""
        if self.center_crop is not None and not 0 < self.center_crop <= resolution:
            raise ConfigError(f"center_crop={self.center_crop} does not fit the generator's "
                              f"{resolution} px output; use at most {resolution} or null")

    def output_size(self, resolution: int) -> int:
        if self.resize is not None:
            return self.resize
        return self.center_crop if self.center_crop is not None else resolution

    def __call__(self, images: Tensor) -> Tensor:
        side = images.shape[-1]
        crop = self.center_crop if self.center_crop is not None else side
        size = self.resize if self.resize is not None else crop
        if crop == side and size == side:
            return images
        return augment.center_crop_resize(images, crop / side, size)
