"""SNS loss and the adversarial-training recipe: hand-computed penalty, reduction to
cross-entropy, sensitive-set refresh, determinism and a short training run."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustx.attacks import pgd
from robustx.data import digits
from robustx.defenses import SNSLoss, train_adversarial, train_sns
from robustx.models import DigitsCNN



def linear_model() -> nn.Sequential:
    fc = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    return nn.Sequential(fc)


def test_penalty_hand_computed_and_gradient_only_through_sensitive_neurons():
    model = linear_model()
    x = torch.zeros(2, 2)
    x_adv = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 2])
    # unit distances per pair: (1, 0, 1) and (0, 2, 1) -> batch sigma = (0.5, 1.0, 1.0)
    loss_fn = SNSLoss(model, sns_lambda=0.5, top_k=2, refresh_every=1)
    loss = loss_fn(x, x_adv, y)
    assert loss_fn.sensitive["0"].tolist() == [1, 2]  # tie between units 1 and 2 kept in order
    ce = F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, ce + 0.5 * 2.0)
    assert loss_fn.last["penalty"] == pytest.approx(2.0)
    penalty_grad = torch.autograd.grad(loss - ce, model[0].weight)[0]
    assert penalty_grad[0].abs().sum() == 0 and penalty_grad[1:].abs().sum() > 0  # unit 0 not sensitive


def test_reduces_to_cross_entropy_when_lambda_is_zero():
    torch.manual_seed(0)
    model = DigitsCNN()
    x = torch.rand(8, 1, 8, 8)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 10, (8,))
    loss = SNSLoss(model, sns_lambda=0.0)(x, x_adv, y)
    assert torch.equal(loss, F.cross_entropy(model(x_adv), y))


def test_sensitive_set_refreshed_every_n_steps():
    model = linear_model()
    x = torch.zeros(1, 2)
    loss_fn = SNSLoss(model, top_k=1, refresh_every=2)
    y = torch.tensor([0])
    loss_fn(x, torch.tensor([[1.0, 0.0]]), y)  # distances (1, 0, 1): unit 0
    assert loss_fn.sensitive["0"].tolist() == [0]
    loss_fn(x, torch.tensor([[0.0, 1.0]]), y)  # (0, 2, 1): not refreshed, unit 0 -> penalty 0
    assert loss_fn.sensitive["0"].tolist() == [0] and loss_fn.last["penalty"] == 0.0
    loss_fn(x, torch.tensor([[0.0, 1.0]]), y)  # third step refreshes: unit 1
    assert loss_fn.sensitive["0"].tolist() == [1] and loss_fn.last["penalty"] == pytest.approx(2.0)


def test_minimising_sns_loss_lowers_the_penalty_on_a_toy_problem():
    """The same 40 Adam steps with lambda = 0 (adversarial CE only) raise the penalty
    (0.79 -> 1.6 here); with lambda = 1 it falls."""
    final = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        x = torch.randn(64, 4)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        x_adv = x + 0.3 * torch.randn_like(x)
        loss_fn = SNSLoss(model, sns_lambda=lam, top_k=0.25, refresh_every=5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        penalties = []
        for _ in range(40):
            loss = loss_fn(x, x_adv, y)
            penalties.append(loss_fn.last["penalty"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[lam] = penalties[-1]
    assert final[1.0] < penalties[0] < final[0.0]
    assert final[1.0] < 0.5 * final[0.0]


@pytest.fixture(scope="module")
def digits_subset():
    x, y = digits("train")
    return x[:256], y[:256]


def test_same_seed_same_model(digits_subset):
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN()
        torch.manual_seed(123)  # the recipe must not depend on the global RNG
        hist = train_sns(model, digits_subset, epochs=1, eps=0.1, steps=2, sns_lambda=0.1, seed=7)
        models.append((model, hist))
    for p, q in zip(models[0][0].parameters(), models[1][0].parameters()):
        assert torch.equal(p, q)
    assert models[0][1] == models[1][1]


def test_short_training_runs_and_records_history(digits_subset):
    histories = {}
    for method in ("standard", "pgd", "sns"):
        torch.manual_seed(0)
        model = DigitsCNN().eval()
        histories[method] = train_adversarial(model, digits_subset, method=method, epochs=2, eps=0.1,
                                              steps=2, sns_lambda=0.1, seed=0)
        assert not model.training  # mode restored
        assert [h["epoch"] for h in histories[method]] == [0, 1]
    assert histories["standard"][1]["loss"] < histories["standard"][0]["loss"]
    assert all(h["penalty"] != h["penalty"] for h in histories["pgd"])  # NaN: no penalty for pgd
    sns = histories["sns"]
    for h in sns:
        assert h["loss"] == pytest.approx(h["ce"] + 0.1 * h["penalty"])


def test_adversarial_training_beats_standard_under_pgd():
    """Madry et al.'s claim on a small scale: PGD training raises accuracy under PGD."""
    x, y = digits("train")
    xt, yt = digits("test")
    acc = {}
    for method in ("standard", "pgd"):
        torch.manual_seed(0)
        model = DigitsCNN()
        train_adversarial(model, (x, y), method=method, epochs=4, lr=3e-3, eps=0.15, steps=3, seed=0)
        x_adv = pgd(model, xt, yt, 0.15, steps=10, seed=1)
        with torch.no_grad():
            acc[method] = (model.eval()(x_adv).argmax(1) == yt).float().mean().item()
    assert acc["pgd"] > acc["standard"] + 0.1, acc


class CountingIdentity:
    """An attack that returns x unchanged and records how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, x, y):
        frozen = not any(p.requires_grad for p in model.parameters())
        self.calls.append((x.shape[0], model.training, frozen))
        return x.clone()


def parameters_after(attack, data, method="pgd", **kwargs):
    torch.manual_seed(0)
    model = DigitsCNN()
    history = train_adversarial(model, data, method=method, attack=attack, epochs=2, seed=3, progress=False,
                                **kwargs)
    return [p.detach().clone() for p in model.parameters()], history


def test_a_custom_attack_callable_is_the_one_used(digits_subset):
    """An identity attack turns PGD training into standard training, step for step."""
    attack = CountingIdentity()
    ours, hist = parameters_after(attack, digits_subset)
    standard, hist_standard = parameters_after("pgd", digits_subset, method="standard")
    assert attack.calls == [(64, False, True)] * 8  # 2 epochs x 4 batches, eval mode, frozen
    assert [{**h, "penalty": 0} for h in hist] == [{**h, "penalty": 0} for h in hist_standard]  # NaN != NaN
    for p, q in zip(ours, standard):
        assert torch.equal(p, q)
    sns_attack = CountingIdentity()
    parameters_after(sns_attack, digits_subset, method="sns")
    assert len(sns_attack.calls) == 8


def test_a_string_picks_the_built_in_attack(digits_subset):
    """attack="fgsm" trains exactly like a hand-written FGSM x + eps sign(grad CE), clipped."""
    def hand_fgsm(model, x, y):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        return (x + 0.1 * grad.sign()).clamp(0, 1).detach()

    built_in, hist = parameters_after("fgsm", digits_subset, eps=0.1)
    by_hand, hist_hand = parameters_after(hand_fgsm, digits_subset)
    for p, q in zip(built_in, by_hand):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert hist[1]["loss"] == pytest.approx(hist_hand[1]["loss"], rel=1e-4)
    pgd_params, _ = parameters_after("pgd", digits_subset, eps=0.1, steps=2)
    assert max((p - q).abs().max().item() for p, q in zip(pgd_params, built_in)) > 1e-3  # a different attack


def test_dataloader_input(digits_subset):
    """A DataLoader yielding the tensor path's shuffled batches trains to the same model."""
    x, y = digits_subset
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))  # the tensor path's epoch 0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[order], y[order]), batch_size=64)
    models = []
    for data in ((x, y), loader):
        torch.manual_seed(0)
        models.append(DigitsCNN())
        hist = train_adversarial(models[-1], data, method="standard", epochs=1, batch_size=64, seed=0)
        if data is loader:
            assert hist[0] == pytest.approx(want[0], rel=0, abs=0, nan_ok=True)  # penalty is NaN
        want = hist
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="trades"), ValueError, "method"),
        (dict(epochs=0), ValueError, "epochs"),
        (dict(optimizer="lbfgs"), ValueError, "optimizer"),
        (dict(attack="bim"), ValueError, "attack must be one of"),
        (dict(attack=3), TypeError, "attack must be a name"),
        (dict(attack=lambda m, x, y: x[:1], epochs=1), ValueError, "attack must return a tensor"),
    ],
)
def test_bad_training_arguments(digits_subset, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_adversarial(DigitsCNN(), digits_subset, progress=False, **kwargs)


def test_bad_input(digits_subset):
    model = DigitsCNN()
    with pytest.raises(TypeError, match="iterator"):
        train_adversarial(model, iter([digits_subset]))
    with pytest.raises(TypeError, match="train_data y must hold integer"):
        train_adversarial(model, (digits_subset[0], digits_subset[1].float()))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        train_adversarial(lambda t: t, digits_subset)
    with pytest.raises(ValueError, match="sns_lambda"):
        SNSLoss(model, sns_lambda=-1.0)
    with pytest.raises(TypeError, match="refresh_every"):
        SNSLoss(model, refresh_every=1.5)
    with pytest.raises(ValueError, match="refresh_every"):
        SNSLoss(model, refresh_every=0)
    with pytest.raises(ValueError, match="k must be"):
        SNSLoss(model, top_k=0)
    with pytest.raises(ValueError, match="no module named"):
        SNSLoss(model, ["features.7"])
    inplace = nn.Sequential(nn.Linear(64, 8), nn.ReLU(inplace=True), nn.Linear(8, 10))
    with pytest.raises(ValueError, match="in place"):
        SNSLoss(inplace)(torch.rand(4, 64), torch.rand(4, 64), torch.zeros(4, dtype=torch.long))
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="x_adv"):
        SNSLoss(model)(x, x[:2], torch.zeros(4, dtype=torch.long))
