import torch

from semdl.data import load_digits, make_synthetic


def test_digits_split_is_fixed_stratified_and_scaled():
    digits = load_digits(seed=0, test_fraction=0.3)
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert len(digits.test_y) == 540
    assert float(digits.train_x.min()) == -1.0 and float(digits.train_x.max()) == 1.0
    train_share = torch.bincount(digits.train_y) / len(digits.train_y)
    test_share = torch.bincount(digits.test_y) / len(digits.test_y)
    assert torch.allclose(train_share, test_share, atol=0.01)
    assert torch.equal(load_digits(seed=0).train_y, digits.train_y)


def test_synthetic_classes_lie_on_their_subspaces():
    data = make_synthetic(
        num_classes=3, ambient_dim=20, subspace_dim=2, train_per_class=50, test_per_class=10, noise=0.0, seed=1
    )
    assert data.train_x.shape == (150, 20) and data.test_x.shape == (30, 20)
    for k in range(3):
        samples = data.train_x[data.train_y == k]
        singular_values = torch.linalg.svdvals(samples)
        # rank 2 exactly before rounding; float32 rounding of C B^T (gamma_2 ||C||_F ||B||_F ~ 1e-6) and svdvals'
        # backward error (~u sigma_1, LAPACK Users' Guide 4.9) leave sigma_3 ~ 1e-6, well under 1e-4
        assert singular_values[1] > 1.0 and singular_values[2] < 1e-4
    assert torch.equal(make_synthetic(seed=1).train_x, make_synthetic(seed=1).train_x)
    assert not torch.equal(make_synthetic(seed=1).train_x, make_synthetic(seed=2).train_x)
