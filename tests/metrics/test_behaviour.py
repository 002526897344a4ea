"""Accuracy, success mask, AA_B via transfer_examples, ACAC/ACTC/NTE/RGB/RIC and the defense
utility metrics against NumPy loops written from the formulas; the logits/mask checks."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from torch import nn

from robustx.metrics import (acac, accuracy, actc, defense_utility, nte, rgb, ric, success_mask,
                             transfer_examples)

N, K = 40, 5


def make(seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, K, generator=g, dtype=torch.float64), torch.randint(0, K, (N,), generator=g)


def softmax_rows(z):
    z = np.asarray(z, dtype=np.float64)
    rows = []
    for r in z:
        e = [math.exp(v - max(r)) for v in r]
        rows.append([v / sum(e) for v in e])
    return rows


def mask_mean(values, mask):
    kept = [v for v, m in zip(values, mask) if m]
    return sum(kept) / len(kept)


def test_accuracy_and_success_mask():
    clean, y = make(0)
    adv, _ = make(1)
    target = (y + 1) % K
    pc, pa = clean.argmax(1).tolist(), adv.argmax(1).tolist()
    yl, tl = y.tolist(), target.tolist()
    assert accuracy(clean, y) == pytest.approx(sum(a == b for a, b in zip(pc, yl)) / N)
    s = success_mask(clean, adv, y)
    assert s.dtype == torch.bool
    assert s.tolist() == [pc[i] == yl[i] and pa[i] != yl[i] for i in range(N)]
    st = success_mask(clean, adv, y, target=target)
    assert st.tolist() == [pc[i] == yl[i] and pa[i] == tl[i] for i in range(N)]
    assert 0 < sum(s.tolist()) < N and 0 < sum(st.tolist())


def test_confidence_metrics_match_loops():
    adv, y = make(2)
    success = torch.rand(N, generator=torch.Generator().manual_seed(3)) < 0.6
    probs = softmax_rows(adv)
    m = success.tolist()
    assert acac(adv, success) == pytest.approx(mask_mean([max(r) for r in probs], m), rel=1e-12)
    assert actc(adv, y, success) == pytest.approx(mask_mean([r[t] for r, t in zip(probs, y.tolist())], m), rel=1e-12)
    gaps = [sorted(r)[-1] - sorted(r)[-2] for r in probs]
    assert nte(adv, success) == pytest.approx(mask_mean(gaps, m), rel=1e-12)
    assert acac(adv.float(), success) == pytest.approx(mask_mean([max(r) for r in probs], m), rel=1e-5)


@pytest.mark.parametrize("fn", [rgb, ric])
def test_rgb_ric_fraction_still_adversarial(fn):
    after, y = make(4)
    success = torch.rand(N, generator=torch.Generator().manual_seed(5)) < 0.5
    pred, m = after.argmax(1).tolist(), success.tolist()
    assert fn(after, y, success) == pytest.approx(mask_mean([float(p != t) for p, t in zip(pred, y.tolist())], m))
    target = torch.tensor(pred)
    target[::3] = (target[::3] + 1) % K
    expected = mask_mean([float(p == t) for p, t in zip(pred, target.tolist())], m)
    assert fn(after, y, success, target=target) == pytest.approx(expected)
    assert 0 < expected < 1


def reference_defense(lo, ld, y):
    po, pd = softmax_rows(lo), softmax_rows(ld)
    fo, fd = [int(np.argmax(r)) for r in po], [int(np.argmax(r)) for r in pd]
    yl = y.tolist()
    n = len(yl)
    both = [i for i in range(n) if fo[i] == yl[i] and fd[i] == yl[i]]
    return {
        "CAV": sum(fd[i] == yl[i] for i in range(n)) / n - sum(fo[i] == yl[i] for i in range(n)) / n,
        "CRR": sum(fo[i] != yl[i] and fd[i] == yl[i] for i in range(n)) / n,
        "CSR": sum(fo[i] == yl[i] and fd[i] != yl[i] for i in range(n)) / n,
        "CCV": sum(abs(max(pd[i]) - max(po[i])) for i in both) / len(both),
        # scipy returns the JS *distance* sqrt(JS); base=None is the natural log
        "COS": sum(jensenshannon(pd[i], po[i]) ** 2 for i in both) / len(both),
    }


def test_defense_utility_matches_loops():
    lo, _ = make(6, scale=2.0)
    y = lo.argmax(1)
    y[::4] = (y[::4] + 1) % K  # the original model gets a quarter wrong
    ld = lo + 1.5 * torch.randn(N, K, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = defense_utility(lo, ld, y)
    ref = reference_defense(lo, ld, y)
    assert set(got) == {"CAV", "CRR", "CSR", "CCV", "COS"}
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert got["CRR"] > 0 and got["CSR"] > 0 and 0 < got["COS"] < math.log(2)


def test_defense_utility_empty_both_right():
    lo, y = make(8)
    wrong = (lo.argmax(1) + 1) % K
    with pytest.warns(RuntimeWarning, match="both models right"):
        got = defense_utility(lo, lo, wrong)
    assert math.isnan(got["CCV"]) and math.isnan(got["COS"]) and got["CAV"] == 0.0


def test_transfer_examples_attack_only_sees_the_surrogate():
    torch.manual_seed(0)
    surrogate, target_model = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    x = torch.rand(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    seen = []

    def fgsm(model, x, y, eps=0.5):
        seen.append(model)
        x = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(x), y).backward()
        return (x + eps * x.grad.sign()).detach()

    x_adv = transfer_examples(fgsm, surrogate, x, y)
    assert seen == [surrogate]
    w, b = surrogate.weight.detach(), surrogate.bias.detach()
    grads = []
    for i in range(30):  # d CE / dx = W^T (softmax - onehot) per example
        p = torch.softmax(w @ x[i] + b, 0)
        p[y[i]] -= 1
        grads.append(w.T @ p)
    torch.testing.assert_close(x_adv, x + 0.5 * torch.stack(grads).sign())
    with torch.no_grad():
        aa_b = accuracy(target_model(x_adv), y)
        expected = np.mean([int(torch.argmax(target_model(x_adv[i]))) == int(y[i]) for i in range(30)])
    assert aa_b == pytest.approx(expected)
    with pytest.raises(TypeError, match="attack"):
        transfer_examples("fgsm", surrogate, x, y)
    with pytest.raises(TypeError, match="surrogate"):
        transfer_examples(fgsm, None, x, y)
    with pytest.raises(ValueError, match="attack must return"):
        transfer_examples(lambda m, x, y: x[:3], surrogate, x, y)


def test_probabilities_are_refused_where_logits_are_expected():
    logits, y = make(9)
    probs = torch.softmax(logits, 1)
    success = torch.ones(N, dtype=torch.bool)
    for call in (lambda: accuracy(probs, y), lambda: acac(probs, success), lambda: nte(probs, success),
                 lambda: actc(probs, y, success), lambda: rgb(probs, y, success),
                 lambda: success_mask(logits, probs, y)):
        with pytest.raises(ValueError, match="logits .*expected"):
            call()
    with pytest.raises(ValueError, match="logits_defended looks like probabilities"):
        defense_utility(logits, probs, y)


def test_bad_arguments_name_them():
    logits, y = make(10)
    success = torch.ones(N, dtype=torch.bool)
    with pytest.raises(ValueError, match="y must hold class indices"):
        actc(logits, y + K, success)
    with pytest.raises(ValueError, match="y must have shape"):
        accuracy(logits, y[:-1])
    with pytest.raises(TypeError, match="y must hold integer"):
        accuracy(logits, y.double())
    with pytest.raises(TypeError, match="success must be a bool"):
        acac(logits, success.int())
    with pytest.raises(ValueError, match="success must have shape"):
        nte(logits, success[:-1])
    with pytest.raises(ValueError, match="logits_adv must have 40 rows"):
        success_mask(logits, logits[:-1], y)
    with pytest.raises(ValueError, match="logits_adv must have shape"):
        acac(logits[:, :1], success)
    with pytest.raises(ValueError, match="NaN"):
        acac(logits * float("nan"), success)
    with pytest.raises(ValueError, match="target must hold class indices"):
        ric(logits, y, success, target=y + K)
    with pytest.raises(ValueError, match="logits_defended must have 40 rows"):
        defense_utility(logits, logits[:3], y)


def test_empty_success_is_nan_with_warning():
    logits, y = make(11)
    none = torch.zeros(N, dtype=torch.bool)
    for call in (lambda: acac(logits, none), lambda: actc(logits, y, none), lambda: nte(logits, none),
                 lambda: rgb(logits, y, none), lambda: ric(logits, y, none)):
        with pytest.warns(RuntimeWarning, match="success is empty"):
            assert math.isnan(call())
