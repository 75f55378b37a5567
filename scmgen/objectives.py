"""Training objectives over environments: the invariance baselines of the CGN paper's Table 1
(IRM, LNTL) and later ones (VREx, GroupDRO), beside plain ERM.

Each training step sees one batch per environment (`scmgen.classify.train_classifier` with
`environments=`). An objective turns the per-environment logits into one loss:

- ERM: the mean cross-entropy (the environments pooled);
- IRMv1 (Arjovsky et al. 2019): + lambda * squared gradient of each environment's risk with
  respect to a dummy classifier scale fixed at 1;
- VREx (Krueger et al. 2021): + lambda * variance of the environments' risks;
- GroupDRO (Sagawa et al. 2020): risks weighted by q, q <- q * exp(eta * risk), renormalised;
- LNTL (Kim et al. 2019): ERM + a head per bias factor (colour / texture index) trained on the
  classifier's features through gradient reversal, so the features lose what predicts the bias.

Penalties start after `anneal_epochs` epochs at weight 1 (a fraction switches them on within an
epoch: the training loop passes its position in epochs, e.g. 0.5 half way through the first); from
then on the loss is divided by the weight when it exceeds 1 (as in the IRM authors' code), and the
optimiser's state is reset, since its step sizes were tuned to the unpenalised loss (as DomainBed
does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scmgen.classifier import average_logits
from scmgen.errors import UsageError


@dataclass
class EnvBatch:
    """One environment's share of a step: the heads' logits and the labels (`label` plus factors)."""

    logits: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]


class Objective(nn.Module):
    """ERM; subclasses add a penalty. `parameters()` (LNTL's bias heads) are trained with the model."""

    name = "erm"
    factors: tuple[str, ...] = ()  # label columns the objective reads besides `label`

    def __init__(self, weight: float = 0.0, anneal_epochs: float = 0) -> None:
        super().__init__()
        self.weight, self.anneal_epochs = weight, anneal_epochs

    def attach(self, model: nn.Module) -> None:
        """Called once before training; LNTL hooks the backbone's features here."""

    def penalised(self, epoch: float) -> bool:
        """Whether the penalty is on at `epoch` (the training's position in epochs)."""
        return epoch >= self.anneal_epochs

    def penalty_weight(self, epoch: float) -> float:
        return self.weight if self.penalised(epoch) else 1.0

    def penalty(self, risks: torch.Tensor, batches: Sequence[EnvBatch], scaled: list[torch.Tensor]) -> torch.Tensor:
        return risks.new_zeros(())

    def combine(self, risks: torch.Tensor) -> torch.Tensor:
        return risks.mean()

    def forward(self, batches: Sequence[EnvBatch], epoch: float) -> tuple[torch.Tensor, dict[str, float]]:
        scales = [torch.ones((), device=b.labels["label"].device, requires_grad=True) for b in batches]
        risks = torch.stack([F.cross_entropy(average_logits(b.logits).float() * s, b.labels["label"])
                             for b, s in zip(batches, scales)])
        penalty = self.penalty(risks, batches, scales)
        weight = self.penalty_weight(epoch)
        loss = self.combine(risks) + weight * penalty
        if weight > 1.0:
            loss = loss / weight
        return loss, {"penalty": float(penalty.detach())}


class IRM(Objective):
    name = "irm"

    def penalty(self, risks: torch.Tensor, batches: Sequence[EnvBatch], scaled: list[torch.Tensor]) -> torch.Tensor:
        grads = [torch.autograd.grad(r, s, create_graph=True)[0] for r, s in zip(risks, scaled)]
        return torch.stack(grads).pow(2).mean()


class VREx(Objective):
    name = "vrex"

    def penalty(self, risks: torch.Tensor, batches: Sequence[EnvBatch], scaled: list[torch.Tensor]) -> torch.Tensor:
        return ((risks - risks.mean()) ** 2).mean()


class GroupDRO(Objective):
    """`weight` is the step size eta of the group weights q; there is no penalty to anneal."""

    name = "groupdro"

    def __init__(self, weight: float = 0.01, anneal_epochs: float = 0) -> None:
        super().__init__(weight, 0)
        self.register_buffer("q", torch.ones(0))

    def penalty_weight(self, epoch: float) -> float:
        return 0.0

    def combine(self, risks: torch.Tensor) -> torch.Tensor:
        if self.q.numel() != risks.numel():
            self.q = torch.full_like(risks, 1.0 / risks.numel()).detach()
        q = self.q * torch.exp(self.weight * risks.detach())
        self.q = q / q.sum()
        return (self.q * risks).sum()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


class LNTL(Objective):
    """`weight`: the strength of the reversed gradient reaching the features. The bias heads
    themselves learn at full strength, so they stay good bias predictors the features must fool."""

    name = "lntl"

    def __init__(self, weight: float = 1.0, anneal_epochs: float = 0, factors: Mapping[str, int] | None = None,
                 features: int = 64) -> None:
        super().__init__(weight, anneal_epochs)
        if not factors:
            raise UsageError("LNTL needs at least one bias factor (a colour or texture index per image)")
        self.factors = tuple(factors)
        self.bias_heads = nn.ModuleDict({f: nn.Linear(features, n) for f, n in factors.items()})
        self._features: torch.Tensor | None = None  # the backbone's output of the latest forward pass

    def attach(self, model: nn.Module) -> None:
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            raise UsageError("LNTL needs a classifier with a `backbone` whose output are the features")
        backbone.register_forward_hook(lambda module, args, output: setattr(self, "_features", output))

    def forward(self, batches: Sequence[EnvBatch], epoch: float) -> tuple[torch.Tensor, dict[str, float]]:
        features = self._features
        assert features is not None, "attach() the objective to the model before training"
        labels = {k: torch.cat([b.labels[k] for b in batches]) for k in ("label", *self.factors)}
        logits = torch.cat([average_logits(b.logits) for b in batches]).float()
        strength = self.weight if self.penalised(epoch) else 0.0
        reversed_features = _ReverseGradient.apply(features.float(), strength)
        bias = torch.stack([F.cross_entropy(head(reversed_features), labels[f]) for f, head in self.bias_heads.items()])
        return F.cross_entropy(logits, labels["label"]) + bias.sum(), {"penalty": float(bias.detach().mean())}


OBJECTIVES: dict[str, type[Objective]] = {c.name: c for c in (Objective, IRM, VREx, GroupDRO, LNTL)}


def make_objective(name: str, **params: Any) -> Objective:
    if name not in OBJECTIVES:
        raise UsageError(f"unknown objective '{name}', expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**params)
