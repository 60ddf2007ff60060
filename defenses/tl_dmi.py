"""TL-DMI: transfer learning as a model inversion defense.

Ho, Hao, Koh, Vo, Tran, Nguyen and Cheung, "Model Inversion Robustness: Can Transfer Learning
Help?", CVPR 2024.

The layers that encode the private data's most specific features are the ones an inversion
exploits; TL-DMI keeps the early layers at weights learnt on *public* data and trains only the
last layers on the private data:

1. pretrain the whole body on the public identities (labels ``0..P-1``) with a temporary head of
   P classes;
2. freeze the early body stages (``requires_grad = False`` and their BatchNorm/Dropout kept in
   eval mode, so not even running statistics move) and fine-tune the last ``finetune_stages``
   stages plus the (fresh) private head on the private data.

With ``pretrain: none`` step 1 is left out: the architecture's own pretrained weights are the public
stage, as in the authors' configurations of the 64 px CelebA protocol (``classify.json``: VGG16 from
ImageNet, ``"public_dataset": "IN1K"``; IR-152 and FaceNet64 from the face.evoLVe MS1M backbones named
in ``"resume"``), and only the private fine-tuning runs.

Default: the authors' VGG16/CelebA configuration (github.com/hosytuyen/TL-DMI,
``config/celeba/training_classifiers/classify.json``, ``freeze_layers: 26``) freezes the
children 0..26 of ``vgg16_bn.features`` and fine-tunes the remaining 5 of 13 convolutions plus
the head, about 40 % of the conv layers; for the 4-stage CPU networks that is the last 2 stages.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import nn

from inversion_bench.defenses._parts import body_stages, under
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer, cross_entropy


def trainable_prefixes(model: Classifier, finetune_stages: int, names: list[str] | None = None) -> list[str]:
    """Module names (relative to the classifier) that are fine-tuned: explicit ``names`` or the last stages + head."""
    if names is not None:
        known = dict(model.named_modules())
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"tl_dmi: trainable: no module {missing[0]!r} in the model; use names such as "
                              f"'head' or {', '.join(n for n, _ in body_stages(model.body))}")
        return list(names)
    stages = [n for n, _ in body_stages(model.body)]
    if finetune_stages > len(stages):
        raise ConfigError(f"tl_dmi: finetune_stages={finetune_stages} but the body has {len(stages)} stages "
                          f"({', '.join(stages)})")
    return (stages[len(stages) - finetune_stages:] if finetune_stages else []) + ["head"]


def freeze(model: nn.Module, trainable: list[str]) -> list[nn.Module]:
    """Sets ``requires_grad`` from ``trainable``; returns the frozen leaf modules with state (to keep in eval mode).

    Parameter-free leaves (ReLU, pooling, a final Dropout) are not returned: they hold nothing to freeze.
    """
    for name, p in model.named_parameters():
        p.requires_grad_(under(name, trainable))
    return [m for name, m in model.named_modules()
            if name and not list(m.children()) and not under(name, trainable)
            and (next(m.parameters(recurse=False), None) is not None
                 or next(m.buffers(recurse=False), None) is not None)]


@defenses.register("tl-dmi", aliases=("tl_dmi",))
class TLDMI(Defense):
    """TL-DMI (Ho et al., CVPR 2024): pretrain on public identities, fine-tune only the last layers privately."""

    class Params(PluginParams):
        finetune_stages: int = Field(
            2, ge=0, description="last body stages fine-tuned on the private data (0: the head only)")
        trainable: list[str] | None = Field(
            None, description="module names fine-tuned instead (e.g. ['body.6', 'head']); overrides finetune_stages")
        pretrain_epochs: int | None = Field(
            None, ge=1, description="epochs of public pretraining (default: the recipe's epochs)")
        pretrain: Literal["public", "none"] = Field(
            "public", description="'public': pretrain on the public identities first; 'none': the architecture's "
            "pretrained weights (ImageNet, face.evoLVe) are the public stage, as TL-DMI's 64 px configurations")

        @model_serializer(mode="wrap")
        def _drop_default_pretrain(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
            """Leaves ``pretrain`` out at its default: the keys of targets trained before it existed stay valid."""
            data = handler(self)
            if data.get("pretrain") == "public":
                data.pop("pretrain")
            return data

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._report: dict[str, float] = {}

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        p = self.params
        trainable = trainable_prefixes(model, p.finetune_stages, p.trainable)
        self._report = {}
        if p.pretrain == "public":
            self._report["public_accuracy"] = self._pretrain(model, trainer)

        # 2. private fine-tuning of the last layers; frozen ones stay in eval mode
        frozen = freeze(model, trainable)

        def keep_frozen_eval(module: nn.Module, args) -> None:
            for m in frozen:
                m.eval()

        handle = model.register_forward_pre_hook(keep_frozen_eval)
        try:
            trainer.fit(model, self.criterion)
        finally:
            handle.remove()
        n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
        n_all = sum(q.numel() for q in model.parameters())
        self._report["trainable_fraction"] = n_train / max(n_all, 1)
        return model

    def _pretrain(self, model: Classifier, trainer: Trainer) -> float:
        """Step 1: the whole body trained on the public identities; returns the public test accuracy."""
        p = self.params
        public = trainer.public
        if public is None or len(public) == 0:
            raise ConfigError("tl_dmi needs the public split for pretraining (dataset.split.public_identities > 0), "
                              "or pretrain: none to start from the architecture's pretrained weights")

        # 1. public pretraining of the whole body with a temporary head of P classes
        torch.manual_seed(trainer.seed)
        n_public = int(public.labels.max()) + 1
        temp = Classifier(model.body, nn.Linear(model.feature_dim, n_public), feature_dim=model.feature_dim,
                          num_classes=n_public, input_size=model.input_size,
                          mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()))
        recipe = trainer.recipe.model_copy(update={"epochs": p.pretrain_epochs or trainer.recipe.epochs})
        pre = Trainer(recipe, public, public, trainer.settings, trainer.seed,
                      desc=f"{trainer.desc} (public pretraining)")
        return pre.fit(temp, cross_entropy).test_accuracy

    def report(self) -> dict[str, float]:
        return dict(self._report)
