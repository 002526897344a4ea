"""Built-in data and models: digits split, shipped digits CNN, ResNet-20 on real CIFAR-10."""
import numpy as np
import pytest
import torch

from robustx.data import aisafety_cifar10, digits
from robustx.models import DigitsCNN, ResNet20, digits_cnn, resnet20_cifar


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_digits_split_is_a_fixed_stratified_partition():
    from sklearn.datasets import load_digits

    x_tr, y_tr = digits("train")
    x_te, y_te = digits("test")
    assert x_tr.dtype == x_te.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.shape[0] + x_te.shape[0] == 1797
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # together they are exactly scikit-learn's images / 16 (as multisets of (image, label) rows)
    bunch = load_digits()
    ref = np.concatenate([bunch.images.reshape(-1, 64) / 16.0, bunch.target[:, None]], 1)
    got = np.concatenate(
        [torch.cat([x_tr, x_te]).reshape(-1, 64).double().numpy(), torch.cat([y_tr, y_te]).numpy()[:, None]], 1
    )
    np.testing.assert_allclose(got[np.lexsort(got.T)], ref[np.lexsort(ref.T)], atol=1e-7)
    # stratified: every class holds 20 % (rounded) of its images in test
    counts = np.bincount(bunch.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(y_te.numpy(), minlength=10), np.round(0.2 * counts))
    # deterministic
    x_again, y_again = digits("test")
    assert torch.equal(x_again, x_te) and torch.equal(y_again, y_te)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="split"):
        digits("validation")
    with pytest.raises(TypeError, match="split"):
        digits(0)
    with pytest.raises(TypeError, match="pretrained"):
        digits_cnn(pretrained="yes")
    with pytest.raises(ValueError, match="num_classes"):
        ResNet20(num_classes=1)
    with pytest.raises(TypeError, match="weights must be a path"):
        resnet20_cifar(weights=3)
    assert ResNet20(num_classes=7)(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_digits_cnn_shipped_weights_accuracy():
    model = digits_cnn()
    assert isinstance(model, DigitsCNN) and not model.training
    x, y = digits("test")
    assert accuracy(model, x, y) >= 0.95
    assert accuracy(digits_cnn(pretrained=False), x, y) < 0.5  # the weights do the work


def test_aisafety_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        aisafety_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resnet20_cifar(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "weights, expected",
    [("resnet20_cifar.pt", 0.99), ("CIFAR10_PAT_enhanced.pt", 0.28), ("CIFAR10_RAND_enhanced.pt", 1.00)],
)
def test_resnet20_clean_accuracy_matches_readme(aisafety_dir, weights, expected):
    x, y = aisafety_cifar10(aisafety_dir)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y.numpy()), np.full(10, 10))  # 10 per class
    model = resnet20_cifar(aisafety_dir / weights)  # strict load: every state-dict key matches
    assert isinstance(model, ResNet20) and not model.training
    assert accuracy(model, x, y) == pytest.approx(expected, abs=0.02)
