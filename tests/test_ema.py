"""The weight average: it follows the weights at its decay, starts short, and round-trips."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from scmgen.ema import WeightAverage


def test_average_follows_the_weights_with_a_short_start() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = WeightAverage({"net": net}, decay=0.99)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    average.update({"net": net})
    keep = 2 / 11  # the first update keeps (1 + 1) / (10 + 1) of the old average, not 0.99
    assert torch.allclose(average.shadow["net"]["0.weight"], keep * start + (1 - keep) * (start + 1))
    assert "1.num_batches_tracked" not in average.shadow["net"]  # integer buffers are not averaged
    assert "1.running_mean" in average.shadow["net"]
    for _ in range(2000):
        average.update({"net": net})
    assert average.rate() == 0.99
    assert torch.allclose(average.shadow["net"]["0.weight"], start + 1)


def test_copy_to_and_state_round_trip() -> None:
    net = nn.Linear(3, 1)
    average = WeightAverage({"net": net}, decay=0.9)
    with torch.no_grad():
        net.weight.mul_(-1)
    average.update({"net": net})
    other = WeightAverage({"net": nn.Linear(3, 1)}, decay=0.9)
    other.load_state_dict(average.state_dict())
    assert other.updates == 1
    target = nn.Linear(3, 1)
    other.copy_to({"net": target})
    assert torch.equal(target.weight, average.shadow["net"]["weight"])
    with pytest.raises(ValueError, match="other mechanisms"):
        WeightAverage({"x": net}, 0.9).load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage({"net": net}, 1.0)
