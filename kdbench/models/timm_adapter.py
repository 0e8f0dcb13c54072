"""Any timm model as a kdbench network: write ``model = "timm:<name>"`` in a recipe.

Wightman, "PyTorch Image Models" (https://github.com/huggingface/pytorch-image-models). The model is
built with ``timm.create_model(name, num_classes=spec.num_classes)``; the feature is timm's pre-logits
vector (``forward_head(forward_features(x), pre_logits=True)``: pooled, and normed or projected where the
architecture does so) and the head is timm's classifier (``get_classifier()``), so ``forward`` computes
exactly what the timm model computes on normalised input.

Models with a fixed input size (ViT, Swin, ...) are built for ``spec.image_size`` through timm's
``img_size`` argument. Input normalisation uses the dataset's statistics (``spec.mean``/``spec.std``),
like every kdbench network, also with ``pretrained = true``.
"""

from __future__ import annotations

from typing import Any

import timm
from pydantic import Field
from torch import Tensor, nn

from kdbench._errors import UserError, close_matches
from kdbench.config import StrictModel
from kdbench.models.base import Network, NetworkSpec, Normalize

__all__ = ["TimmConfig", "TimmNetwork", "suggest_timm_models"]


class TimmConfig(StrictModel):
    """Options of ``timm:<name>`` models."""

    #: Load timm's pretrained weights. Needs network access to the Hugging Face hub, or the weights in its
    #: local cache (``HF_HUB_OFFLINE=1``); the classifier is re-initialised when the class count differs.
    pretrained: bool = False
    #: Dropout before the classifier (timm's ``drop_rate``).
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)


def suggest_timm_models(name: str, n: int = 5) -> list[str]:
    """Up to ``n`` timm model names that contain ``name`` or look like it."""
    names = timm.list_models()
    containing = [m for m in names if name.lower() in m]
    ranked = close_matches(name, names, n=n) + sorted(containing, key=len)
    return list(dict.fromkeys(ranked))[:n]


class TimmNetwork(Network):
    """A timm model behind the `Network` interface; the variant is the timm model name."""

    Config = TimmConfig
    accepts_variant = True
    #: The timm model without its classifier (timm methods such as ``forward_features`` are untyped).
    model: Any

    def __init__(self, spec: NetworkSpec, config: TimmConfig, variant: str | None = None):
        super().__init__()
        if not variant:
            raise UserError('the timm model needs a name: write "timm:<name>", e.g. "timm:resnet18"')
        if not timm.is_model(variant):
            matches = suggest_timm_models(variant)
            hint = (
                f"did you mean {' or '.join(repr(m) for m in matches)}?"
                if matches
                else "no similar names; list them with python -c \"import timm; print(timm.list_models('*vit*'))\""
            )
            raise UserError(f"unknown timm model {variant!r} (timm {timm.__version__}); {hint}")
        self.variant = variant
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = _create(variant, spec, config)

        classifier = self.model.get_classifier()
        if not isinstance(classifier, nn.Module):
            raise UserError(
                f"timm model {variant!r} has several classifier heads (e.g. a distillation token's); "
                "only models with a single classifier are supported"
            )
        # The classifier moves out of the timm model to `self.head`, so its weights are stored once.
        path = next((name for name, module in self.model.named_modules() if module is classifier and name), None)
        if path is not None:
            self.model.set_submodule(path, nn.Identity())
        self.head = classifier
        self.num_classes = spec.num_classes
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def features(self, x: Tensor) -> Tensor:
        out = self.model.forward_features(self.normalize(x))
        feats: Tensor = self.model.forward_head(out, pre_logits=True)
        return feats


def _create(variant: str, spec: NetworkSpec, config: TimmConfig) -> Any:
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes}
    if config.drop_rate > 0:
        kwargs["drop_rate"] = config.drop_rate
    pretrained_cfg = timm.get_pretrained_cfg(variant)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = spec.image_size
    try:
        return timm.create_model(variant, pretrained=config.pretrained, **kwargs)
    except TypeError as exc:
        rejected = [key for key in kwargs if f"'{key}'" in str(exc)]
        if not rejected:
            raise
        what = {"img_size": f"an input size of {spec.image_size}"}.get(rejected[0], rejected[0])
        raise UserError(f"timm model {variant!r} cannot be built with {what}: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        if not config.pretrained:
            raise
        raise UserError(
            f"could not load pretrained weights for timm model {variant!r}: {type(exc).__name__}: {exc}; "
            "pretrained weights need network access to the Hugging Face hub or a filled local cache"
        ) from exc
