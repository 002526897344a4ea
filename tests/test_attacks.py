"""Attacks against foolbox 3.3.4 (same algorithms; skipped without foolbox), analytic
linear-model cases, the attack protocol and invariants."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustx.attacks import ATTACKS, attack_settings, carlini_wagner_l2, deepfool, fgsm, get_attack, pgd
from robustx.data import digits
from robustx.models import digits_cnn


@pytest.fixture(scope="module")
def fb():
    """foolbox, the peer library of the comparison tests (skipped when it is not installed)."""
    return pytest.importorskip("foolbox")

@pytest.fixture(scope="module")
def cnn():
    return digits_cnn()


@pytest.fixture(scope="module")
def batch(cnn):
    """24 correctly classified test digits."""
    x, y = digits("test")
    with torch.no_grad():
        ok = cnn(x).argmax(1) == y
    return x[ok][:24], y[ok][:24]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def l2(a, b):
    return (a - b).flatten(1).norm(dim=1)


def linear_model(d=20, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, k).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, d, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(k, generator=gen, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("norm, fb_attack, eps", [("inf", "FGSM", 0.1), (2, "L2FastGradientAttack", 0.5)])
def test_fgsm_matches_foolbox(fb, cnn, batch, norm, fb_attack, eps):
    x, y = batch
    ours = fgsm(cnn, x, y, eps, norm=norm)
    _, theirs, _ = getattr(fb.attacks, fb_attack)()(fb.PyTorchModel(cnn, bounds=(0, 1)), x, y, epsilons=eps)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert accuracy(cnn, ours, y) < 1.0


@pytest.mark.parametrize("norm, fb_attack, eps, atol", [("inf", "LinfPGD", 0.1, 1e-6), (2, "L2PGD", 1.0, 1e-3)])
def test_pgd_without_random_start_matches_foolbox(fb, cnn, batch, norm, fb_attack, eps, atol):
    x, y = batch
    ours = pgd(cnn, x, y, eps, norm=norm, steps=10, step_size=eps / 4, random_start=False)
    attack = getattr(fb.attacks, fb_attack)(abs_stepsize=eps / 4, steps=10, random_start=False)
    _, theirs, _ = attack(fb.PyTorchModel(cnn, bounds=(0, 1)), x, y, epsilons=eps)
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


def test_pgd_random_start_stays_in_ball_and_matches_foolbox_accuracy(fb, cnn, batch):
    x, y = batch
    fmodel = fb.PyTorchModel(cnn, bounds=(0, 1))
    for eps in (0.1, 0.2):
        ours = pgd(cnn, x, y, eps, steps=10)
        assert (ours - x).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
        _, theirs, _ = fb.attacks.LinfPGD(steps=10, abs_stepsize=2.5 * eps / 10)(fmodel, x, y, epsilons=eps)
        assert abs(accuracy(cnn, ours, y) - accuracy(cnn, theirs, y)) <= 0.1
    assert accuracy(cnn, ours, y) <= 0.05  # eps 0.2 breaks the digits CNN
    ours2 = pgd(cnn, x, y, 1.5, norm="2", steps=10)
    assert l2(ours2, x).max() <= 1.5 + 1e-5 and ours2.min() >= 0 and ours2.max() <= 1
    assert accuracy(cnn, ours2, y) <= 0.25


def test_pgd_seeds_restarts_and_chunking(cnn, batch):
    x, y = batch
    one = pgd(cnn, x, y, 0.08, steps=5)
    assert torch.equal(one, pgd(cnn, x, y, 0.08, steps=5))  # same seed, same result
    assert not torch.equal(one, pgd(cnn, x, y, 0.08, steps=5, seed=1))
    # chunking changes nothing (up to float rounding of the convolutions at another batch size)
    torch.testing.assert_close(pgd(cnn, x, y, 0.08, steps=5, batch_size=7), one, atol=1e-5, rtol=0)
    with torch.no_grad():
        fooled_one = cnn(one).argmax(1) != y
        many = pgd(cnn, x, y, 0.08, steps=5, restarts=4)
        fooled_many = cnn(many).argmax(1) != y
    # restart 0 is the single run (the same batches, so the same bits): restarts keep every success and may add more
    assert torch.equal(many[fooled_one], one[fooled_one])
    assert (fooled_many | ~fooled_one).all() and fooled_many.sum() >= fooled_one.sum()


def test_pgd_targeted_reaches_target(cnn, batch):
    x, y = batch
    target = (y + 1) % 10
    adv = pgd(cnn, x, target, 0.3, steps=10, targeted=True)
    with torch.no_grad():
        hit = (cnn(adv).argmax(1) == target).double().mean().item()
    assert hit >= 0.9


def test_deepfool_linear_model_finds_exact_boundary_distance():
    model = linear_model()
    x = torch.rand(16, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    overshoot = 0.02
    adv = deepfool(model, x, overshoot=overshoot, clip_values=None)  # the exact distance has no box
    with torch.no_grad():
        f = model(x)
    c = f.argmax(1)
    w = model.weight
    # analytic: min_j |f_c - f_j| / ||w_c - w_j||_2 over j != c
    dist = torch.stack([
        torch.stack([(f[i, c[i]] - f[i, j]).abs() / (w[c[i]] - w[j]).norm() for j in range(5) if j != c[i]]).min()
        for i in range(16)
    ])
    torch.testing.assert_close(l2(adv, x), (1 + overshoot) * (dist + 1e-4), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert (model(adv).argmax(1) != c).all()
    assert adv.dtype == torch.float64


def test_deepfool_matches_foolbox_on_digits_cnn(fb, cnn, batch):
    x, y = batch
    ours = deepfool(cnn, x, clip_values=(0, 1))
    _, theirs, _ = fb.attacks.L2DeepFoolAttack()(fb.PyTorchModel(cnn, bounds=(0, 1)), x, y, epsilons=None)
    assert accuracy(cnn, ours, y) == 0.0
    torch.testing.assert_close(l2(ours, x), l2(theirs, x), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(deepfool(cnn, x, clip_values=(0, 1), batch_size=5), ours, atol=1e-5, rtol=0)


def test_carlini_wagner_matches_foolbox_on_digits_cnn(fb, cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    kwargs = dict(binary_search_steps=4, steps=50, stepsize=5e-2, initial_const=0.1)
    ours = carlini_wagner_l2(cnn, x, y, binary_steps=4, steps=50, lr=5e-2, c_init=0.1)
    _, theirs, _ = fb.attacks.L2CarliniWagnerAttack(**kwargs)(fb.PyTorchModel(cnn, bounds=(0, 1)), x, y, epsilons=None)
    with torch.no_grad():
        fooled = cnn(ours).argmax(1) != y
    assert fooled.double().mean() >= 0.9
    assert (l2(ours, x)[~fooled] == 0).all()  # failures come back unchanged
    d_ours, d_theirs = l2(ours, x)[fooled], l2(theirs, x)[fooled]
    assert d_ours.median() == pytest.approx(d_theirs.median().item(), rel=0.2)
    assert ours.min() >= 0 and ours.max() <= 1
    # C&W looks for the smallest distortion: below a PGD-L2 success radius for the same inputs
    assert d_ours.median() < 1.5


def test_carlini_wagner_linear_model_near_boundary_distance():
    """For a linear model the smallest L2 adversarial distance is the boundary distance
    min_j |f_c - f_j| / ||w_c - w_j||_2 (inputs far enough from the box edges): C&W can
    not beat it and should land within a few percent of it."""
    model = linear_model(d=10, k=3, seed=2)
    x = 0.45 + 0.1 * torch.rand(16, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        f = model(x)
    c = f.argmax(1)
    w = model.weight.detach()
    dist = torch.stack([
        torch.stack([(f[i, c[i]] - f[i, j]).abs() / (w[c[i]] - w[j]).norm() for j in range(3) if j != c[i]]).min()
        for i in range(16)
    ])
    keep = (dist > 0.01) & (dist < 0.1)  # away from the boundary, and the box does not bind
    assert keep.sum() >= 8
    adv = carlini_wagner_l2(model, x[keep], c[keep], binary_steps=8, steps=100, lr=1e-2, c_init=1.0)
    ratio = l2(adv, x[keep]) / dist[keep]
    assert (ratio >= 1 - 1e-9).all() and (ratio <= 1.02).all()


def test_attacks_leave_the_model_as_they_found_it():
    model = linear_model(d=64, k=10).float()
    model.train()
    x = torch.rand(4, 64)
    y = torch.tensor([0, 1, 2, 3])
    pgd(model, x, y, 0.1, steps=2)
    deepfool(model, x, steps=2)
    carlini_wagner_l2(model, x, y, binary_steps=1, steps=2)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():  # attacks work inside no_grad blocks as well
        assert fgsm(model, x, y, 0.1).shape == x.shape


def test_bad_arguments_raise(cnn, batch):
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="eps"):
        pgd(cnn, x, y, 0.0)
    with pytest.raises(ValueError, match="norm"):
        fgsm(cnn, x, y, 0.1, norm=1)
    with pytest.raises(ValueError, match="norm"):
        pgd(cnn, x, y, 0.1, norm="l7")
    with pytest.raises(ValueError, match="y must have shape"):
        pgd(cnn, x, y[:3], 0.1)
    with pytest.raises(TypeError, match="steps must be an int"):
        pgd(cnn, x, y, 0.1, steps=2.0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pgd(lambda t: t, x, y, 0.1)
    with pytest.raises(TypeError, match="overshoot"):
        deepfool(cnn, x, overshoot="big")
    with pytest.raises(ValueError, match="confidence"):
        carlini_wagner_l2(cnn, x, y, confidence=-1.0)
    with pytest.raises(TypeError, match="y must hold integer"):
        fgsm(cnn, x, y.float(), 0.1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        pgd(cnn, x, y + 10, 0.1)
    with pytest.raises(ValueError, match="clip_values"):
        pgd(cnn, x + 2, y, 0.1)
    with pytest.raises(ValueError, match="restarts"):
        pgd(cnn, x, y, 0.1, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="steps"):
        deepfool(cnn, x, steps=0)
    with pytest.raises(ValueError, match="clip_values"):
        carlini_wagner_l2(cnn, x, y, clip_values=None)
    with pytest.raises(ValueError, match="x contains NaN"):
        deepfool(cnn, x * math.nan)


def linear_grad_ce(model, x, y):
    """grad_x CE(Wx + b, y) = W^T (softmax(Wx + b) - onehot(y)) per row (analytic)."""
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    return (p - F.one_hot(y, p.shape[1]).double()) @ model.weight


@pytest.mark.parametrize("norm", ["inf", 2])
def test_get_attack_fgsm_is_the_analytic_step_on_a_linear_model(norm):
    model = linear_model()
    x = 0.25 + 0.5 * torch.rand(6, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.arange(6) % 5
    g = linear_grad_ce(model, x, y)
    step = g.sign() if norm == "inf" else g / g.norm(dim=1, keepdim=True)
    attack = get_attack("fgsm", eps=0.2, norm=norm)
    torch.testing.assert_close(attack(model, x, y), (x + 0.2 * step).clamp(0, 1), rtol=0, atol=1e-12)


def test_get_attack_deepfool_ignores_labels_and_pgd_takes_its_settings():
    model = linear_model()
    x = torch.rand(5, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.long)
    attack = get_attack("deepfool", overshoot=0.0, progress=False)
    torch.testing.assert_close(attack(model, x, y), attack(model, x, y + 3), rtol=0, atol=0)
    with torch.no_grad():
        assert (model(attack(model, x, y)).argmax(1) != model(x).argmax(1)).all()
    adv = get_attack("pgd", eps=0.05, steps=3, random_start=False, clip_values=None, progress=False)(model, x, y)
    assert (adv - x).abs().max().item() == pytest.approx(0.05, abs=1e-12)  # eps reached, not exceeded


def test_get_attack_rejects_unknown_names_and_settings():
    assert set(ATTACKS) == {"fgsm", "pgd", "deepfool", "cw", "autoattack"}
    assert {"eps", "steps", "seed"} <= set(attack_settings("pgd")) and "y" not in attack_settings("deepfool")
    with pytest.raises(ValueError, match="attack must be one of"):
        get_attack("bim", eps=0.1)
    with pytest.raises(TypeError, match="attack must be a name"):
        get_attack(3)
    with pytest.raises(TypeError, match=r"no setting\(s\) \['epsilon'\]"):
        get_attack("pgd", epsilon=0.1)
    with pytest.raises(TypeError, match=r"needs the setting\(s\) \['eps'\]"):
        get_attack("fgsm")
