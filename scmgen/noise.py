"""Truncated noise: the sampling trick that trades a generator's diversity for typical, cleaner
outputs (BigGAN's truncation; the CGN reference generates its counterfactual ImageNet at 0.5).
Values above 1 go the other way: wider noise, less typical outputs (up to 2). This truncates the
graph's noise nodes; a mechanism that truncates its own input (BigGAN's `truncation` param) would
truncate again, so graphs of such mechanisms set theirs instead.

A truncated draw is a deterministic function of a standard-normal one (inverse-CDF transform), so
truncating consumes exactly the random numbers an untruncated draw does: the same seed gives the
same labels and the same images up to the truncated latents.
"""
from __future__ import annotations

import torch

from scmgen.errors import UsageError
from scmgen.spec import GraphSpec, NoiseNode

BOUND = 2.0  # standard deviations kept before scaling, as BigGAN's scipy truncnorm(-2, 2)


def truncated_noise(noise: torch.Tensor, truncation: float) -> torch.Tensor:
    """Map N(0, 1) noise to `truncation` times a normal truncated to [-2, 2]."""
    x = noise.double()
    low = torch.special.ndtr(torch.tensor(-BOUND, dtype=torch.float64))
    p = low + (1 - 2 * low) * torch.special.ndtr(x)
    return (truncation * torch.special.ndtri(p)).to(noise.dtype)


def parse_truncation(text: str | None, spec: GraphSpec) -> dict[str, float]:
    """'0.5' (every normal noise node of the graph) or 'u_shape=0.5,u_texture=0.8' -> {node: truncation}."""
    nodes = [k for k, v in spec.nodes.items() if isinstance(v, NoiseNode) and v.distribution == "normal"]
    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.rpartition("=")
        try:
            psi = float(value)
        except ValueError:
            psi = float("nan")
        if not 0 < psi <= 2:
            raise UsageError(f"--truncation {text}: expected a value in (0, 2] in {item!r}")
        if sep and name not in nodes:
            raise UsageError(f"--truncation {text}: {name!r} is not a normal noise node "
                             f"(expected one of: {', '.join(nodes) or 'none in this graph'})")
        for node in ([name] if sep else nodes):
            out[node] = psi
    return out
