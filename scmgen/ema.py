"""An exponential moving average of the trained mechanisms' weights (`train.ema`).

A GAN's generator at its last step carries that step's noise: the critic has just pushed it one
way. The average of its recent weights draws cleaner, more stable images (Yazici et al. 2019,
"The unusual effectiveness of averaging in GAN training"; StyleGAN and BigGAN sample from it).
Training keeps updating the live weights; the average only replaces them when training ends.
Floating buffers (batch-norm statistics) are averaged too, so the statistics match the weights.
"""
from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """Shadow copies of `modules`' parameters and floating buffers, updated after each step."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = {name: {k: v.detach().clone() for k, v in _averaged(m)} for name, m in modules.items()}

    def rate(self) -> float:
        """The decay at this update: short at first, so the first weights do not linger (as in TF's EMA)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        self.updates += 1
        keep = self.rate()
        for name, module in modules.items():
            shadow = self.shadow[name]
            for k, v in _averaged(module):
                shadow[k].lerp_(v.detach(), 1 - keep)  # shadows are clones: same dtype and device

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Replace the live weights by the average (at the end of training)."""
        for name, module in modules.items():
            for k, v in _averaged(module):
                v.copy_(self.shadow[name][k])

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        if {n: set(s) for n, s in shadow.items()} != {n: set(s) for n, s in self.shadow.items()}:
            raise ValueError("the stored weight average is for other mechanisms or layers")
        for name, tensors in self.shadow.items():
            for k, v in tensors.items():
                v.copy_(shadow[name][k])
        self.updates = int(state["updates"])  # type: ignore[arg-type]


def _averaged(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and floating buffers; integer buffers (batch counts, flags) are left alone."""
    return [*module.named_parameters(), *((k, b) for k, b in module.named_buffers() if b.is_floating_point())]
