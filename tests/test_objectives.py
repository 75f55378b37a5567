"""The invariance objectives of Table 1's baselines: each penalty is what its paper defines, and
training on environments runs through the classifier's one training loop."""
import collections

import pytest
import torch
import torch.nn.functional as F

from scmgen.classifier import InvariantClassifier
from scmgen.classify import train_classifier
from scmgen.data import ImageSet
from scmgen.errors import UsageError
from scmgen.objectives import IRM, LNTL, EnvBatch, GroupDRO, Objective, VREx, make_objective


def _batches(seed: int = 0, envs: int = 2, n: int = 16) -> list[EnvBatch]:
    g = torch.Generator().manual_seed(seed)
    return [EnvBatch({"shape": torch.randn(n, 10, generator=g, requires_grad=True)},
                     {"label": torch.randint(0, 10, (n,), generator=g)}) for _ in range(envs)]


def test_erm_is_the_mean_risk() -> None:
    batches = _batches()
    loss, _ = Objective()(batches, epoch=0)
    expected = torch.stack([F.cross_entropy(b.logits["shape"], b.labels["label"]) for b in batches]).mean()
    assert torch.allclose(loss, expected)


def test_irm_penalty_is_the_squared_gradient_of_each_risk_wrt_a_unit_scale() -> None:
    batches = _batches()
    _, stats = IRM(weight=1.0)(batches, epoch=0)
    expected = []
    for b in batches:
        scale = torch.ones((), requires_grad=True)
        risk = F.cross_entropy(b.logits["shape"].detach() * scale, b.labels["label"])
        expected.append(torch.autograd.grad(risk, scale)[0] ** 2)
    assert stats["penalty"] == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_penalties_start_after_annealing_and_a_large_weight_rescales_the_loss() -> None:
    batches = _batches()
    before, stats = VREx(weight=100.0, anneal_epochs=1)(batches, epoch=0)
    after, _ = VREx(weight=100.0, anneal_epochs=1)(batches, epoch=1)
    risks = torch.stack([F.cross_entropy(b.logits["shape"], b.labels["label"]) for b in batches])
    variance = ((risks - risks.mean()) ** 2).mean()
    assert stats["penalty"] == pytest.approx(float(variance.detach()), rel=1e-5)
    assert torch.allclose(before, risks.mean() + variance)
    assert torch.allclose(after, (risks.mean() + 100.0 * variance) / 100.0)


def test_groupdro_moves_weight_to_the_worst_environment() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (32,), generator=g)
    good = F.one_hot(labels, 10).float() * 10  # confident and right
    bad = torch.zeros(32, 10)  # uniform: a higher risk
    dro = GroupDRO(weight=0.5)
    for _ in range(5):
        dro([EnvBatch({"shape": good}, {"label": labels}), EnvBatch({"shape": bad}, {"label": labels})], epoch=0)
    assert dro.q[1] > 0.6 > dro.q[0]
    assert float(dro.q.sum()) == pytest.approx(1.0)


def test_lntl_reverses_the_bias_gradient_into_the_features() -> None:
    torch.manual_seed(0)
    model = InvariantClassifier("mnist.cnn", {"shape": 10})
    objective = LNTL(weight=1.0, factors={"texture": 10})
    objective.attach(model)
    images, labels = torch.randn(8, 3, 32, 32), {"label": torch.randint(0, 10, (8,)),
                                                 "texture": torch.randint(0, 10, (8,))}
    grads = {}
    for strength in (0.0, 1.0):
        objective.weight = strength
        logits = model(images)
        features = objective._features
        features.retain_grad()
        loss, _ = objective([EnvBatch(logits, labels)], epoch=0)
        loss.backward()
        grads[strength] = features.grad
    bias_loss = F.cross_entropy(objective.bias_heads["texture"](features), labels["texture"])
    direct = torch.autograd.grad(bias_loss, features)[0]
    assert torch.allclose(grads[1.0] - grads[0.0], -direct, atol=1e-6)  # the bias gradient arrives negated
    assert objective.bias_heads["texture"].weight.grad.abs().sum() > 0  # the bias head itself learns normally


def _envs() -> list[ImageSet]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        labels = torch.randint(0, 10, (64,), generator=g)
        images = torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8)
        out.append(ImageSet(images, labels, {"shape": labels, "texture": labels.flip(0)}))
    return out


@pytest.mark.parametrize("name", ["erm", "irm", "vrex", "groupdro", "lntl"])
def test_every_objective_trains_on_environments(name: str) -> None:
    torch.manual_seed(0)
    model = InvariantClassifier("mnist.cnn", {"shape": 10})
    extra = {"factors": {"texture": 10}} if name == "lntl" else {}
    objective = make_objective(name, weight=10.0 if name != "groupdro" else 0.01, anneal_epochs=1, **extra)
    result = train_classifier(model, environments=_envs(), objective=objective, recipe="mnist", epochs=2,
                              batch_size=16, device="cpu", progress=False)
    assert result.steps == 2 * 4 and result.images == result.steps * 32  # a batch of 16 from each of 2 envs
    assert all("penalty" in h and h["loss_real"] == h["loss_real"] for h in result.history)  # not NaN


def test_a_fractional_anneal_switches_the_penalty_on_within_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast recipe trains one epoch: its IRM and V-REx penalties must still switch on (after a third of
    it), and the optimiser's step sizes restart once, there."""
    import scmgen.classify as classify

    positions: list[float] = []
    clears: list[int] = []

    class Spy(VREx):
        def forward(self, batches, epoch):  # noqa: ANN001, ANN201
            positions.append(epoch)
            return super().forward(batches, epoch)

    class State(collections.defaultdict):
        def clear(self) -> None:
            clears.append(len(positions))
            super().clear()

    def optimizer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        opt, schedule = real_optimizer(*args, **kwargs)
        opt.state = State(dict)
        return opt, schedule

    real_optimizer = classify._optimizer
    monkeypatch.setattr(classify, "_optimizer", optimizer)
    objective = Spy(weight=10.0, anneal_epochs=0.5)
    train_classifier(InvariantClassifier("mnist.cnn", {"shape": 10}), environments=_envs(), objective=objective,
                     recipe="mnist", epochs=1, batch_size=16, device="cpu", progress=False)
    assert positions == [0.0, 0.25, 0.5, 0.75]  # 4 steps of a batch from each of 2 environments
    assert [objective.penalty_weight(p) for p in positions] == [1.0, 1.0, 10.0, 10.0]
    assert clears == [2]  # once, before the first penalised step


def test_an_objective_that_needs_a_missing_factor_says_so() -> None:
    envs = [ImageSet(e.images, e.labels, {"shape": e.labels}) for e in _envs()]
    with pytest.raises(UsageError, match="needs the label column"):
        train_classifier(InvariantClassifier("mnist.cnn", {"shape": 10}), environments=envs,
                         objective=make_objective("lntl", factors={"texture": 10}), recipe="mnist", epochs=1,
                         batch_size=16, device="cpu", progress=False)
    with pytest.raises(UsageError, match="unknown objective"):
        make_objective("dro")
