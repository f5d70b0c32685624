import numpy as np
import pytest

from scalelab.laws.forms import FORMS, LawFitError

PARAMS = {
    "data": {"E": 2.0, "B": 300.0, "beta": 0.35},
    "model": {"E": 2.2, "A": 500.0, "alpha": 0.32},
    "chinchilla": {"E": 1.82, "A": 482.0, "alpha": 0.3478, "B": 2085.0, "beta": 0.3658},
    "data_constrained": {"E": 1.87, "A": 521.0, "alpha": 0.353, "B": 1488.0, "beta": 0.353, "R_D": 15.4, "R_N": 5.3},
    "data_constrained_D": {"E": 1.87, "B": 1488.0, "beta": 0.353, "R_D": 15.4},
}


def mixed_points(n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """Points with repeats, with fewer tokens than the unique pool, and with model sizes on both sides of
    N_opt(U)."""
    rng = np.random.default_rng(seed)
    U = 10 ** rng.uniform(7, 9, n)
    return {"N": 10 ** rng.uniform(5, 9, n), "U": U, "D": U * rng.choice([0.5, 1.0, 1.5, 4.0, 30.0, 300.0], n)}


def test_registry_spells_the_agreed_interface():
    assert {name: (law.params, law.inputs) for name, law in FORMS.items()} == {
        "data": (("E", "B", "beta"), ("D",)),
        "model": (("E", "A", "alpha"), ("N",)),
        "chinchilla": (("E", "A", "alpha", "B", "beta"), ("N", "D")),
        "data_constrained": (("E", "A", "alpha", "B", "beta", "R_D", "R_N"), ("N", "D", "U")),
        "data_constrained_D": (("E", "B", "beta", "R_D"), ("D", "U")),
    }
    assert all(law.name == name for name, law in FORMS.items())


def test_power_law_forms_are_their_formulas():
    X = {"N": np.array([1e6, 3e7, 1e9]), "D": np.array([2e8, 5e9, 1e11])}
    p = PARAMS["chinchilla"]
    expected = p["E"] + p["A"] * X["N"] ** -p["alpha"] + p["B"] * X["D"] ** -p["beta"]
    np.testing.assert_allclose(FORMS["chinchilla"].predict(p, X), expected, rtol=1e-12)
    d = PARAMS["data"]
    np.testing.assert_allclose(FORMS["data"].predict(d, X), d["E"] + d["B"] * X["D"] ** -d["beta"], rtol=1e-12)
    m = PARAMS["model"]
    np.testing.assert_allclose(FORMS["model"].predict(m, X), m["E"] + m["A"] * X["N"] ** -m["alpha"], rtol=1e-12)


def test_data_constrained_matches_the_authors_reference_values():
    # Muennighoff et al.'s fitted C4 law and the two models of their Figure 1 (right), with the losses their
    # reference code prints (github.com/huggingface/datablations, README, "Parametric Fit").
    params = {"E": np.exp(0.6254804), "A": np.exp(6.255414), "alpha": 0.3526596, "B": np.exp(7.3049974),
              "beta": 0.3526596, "R_D": 15.387756, "R_N": 5.309743}
    X = {"N": np.array([6.34e9, 8.67e9]), "D": np.array([242e9, 178e9]), "U": 25e9}
    np.testing.assert_allclose(FORMS["data_constrained"].predict(params, X),
                               [2.2256440889984477, 2.2269634075087867], rtol=1e-9)


def test_data_constrained_is_chinchilla_for_one_epoch_and_no_excess_parameters():
    p = PARAMS["data_constrained"]
    n_opt = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / p["alpha"]) * 1e9 ** (p["beta"] / p["alpha"])
    X = {"N": np.array([1e6, 1e7, 0.999 * n_opt]), "D": 1e9, "U": 1e9}
    chinchilla = {k: p[k] for k in FORMS["chinchilla"].params}
    np.testing.assert_allclose(FORMS["data_constrained"].predict(p, X), FORMS["chinchilla"].predict(chinchilla, X),
                               rtol=1e-12)
    bigger = FORMS["data_constrained"].predict(p, {"N": 10 * n_opt, "D": 1e9, "U": 1e9})
    assert bigger > FORMS["chinchilla"].predict(chinchilla, {"N": 10 * n_opt, "D": 1e9})


def test_effective_data_saturates_at_u_times_one_plus_r_d():
    p = PARAMS["data_constrained_D"]
    U = 1e8
    epochs = np.array([1.0, 2.0, 16.0, 1e4])
    loss = FORMS["data_constrained_D"].predict(p, {"D": U * epochs, "U": U})
    assert np.all(np.diff(loss) < 0)
    ceiling = p["E"] + p["B"] * (U * (1 + p["R_D"])) ** -p["beta"]
    np.testing.assert_allclose(loss[-1], ceiling, rtol=1e-9)
    # A second epoch is worth nearly a second fresh pass: D' = U (1 + R_D (1 - exp(-1 / R_D))) ≈ 1.97 U.
    fresh = p["E"] + p["B"] * (np.array([2.0, 1.95]) * U) ** -p["beta"]
    assert fresh[0] < loss[1] < fresh[1]


def test_a_unique_pool_larger_than_the_tokens_trained_on_is_one_epoch():
    p = PARAMS["data_constrained_D"]
    D = np.array([1e7, 1e8])
    np.testing.assert_allclose(FORMS["data_constrained_D"].predict(p, {"D": D, "U": 1e9}),
                               FORMS["data"].predict({k: p[k] for k in ("E", "B", "beta")}, {"D": D}), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_jacobian_matches_finite_differences(name):
    law = FORMS[name]
    X = mixed_points()
    Z = law.design({k: X[k] for k in law.inputs})
    theta = law.to_theta(np.array([PARAMS[name][k] for k in law.params]))
    _, J = law.log_loss(theta, Z, jac=True)
    numeric = np.empty_like(J)
    for j in range(len(theta)):
        step = np.zeros_like(theta)
        step[j] = 1e-6
        numeric[:, j] = (law.log_loss(theta + step, Z) - law.log_loss(theta - step, Z)) / 2e-6
    np.testing.assert_allclose(J, numeric, atol=1e-7)
    if name == "data_constrained":  # the points exercise both branches of U_N = min(N, N_opt(U))
        assert np.abs(J[:, law.params.index("R_N")]).max() > 0
        assert (J[:, law.params.index("R_N")] == 0).any()


@pytest.mark.parametrize("name", sorted(FORMS))
def test_predict_takes_a_mapping_or_arrays_of_parameter_draws(name):
    law = FORMS[name]
    X = {k: v[:5] for k, v in mixed_points().items()}
    natural = np.array([PARAMS[name][k] for k in law.params])
    one = law.predict(PARAMS[name], X)
    assert one.shape == (5,)
    np.testing.assert_allclose(law.predict(natural, X), one)
    draws = np.stack([natural, natural * 1.01])
    batch = law.predict(draws, X)
    assert batch.shape == (2, 5)
    np.testing.assert_allclose(batch[0], one)
    np.testing.assert_allclose(law.from_theta(law.to_theta(draws)), draws)
    scalar = law.predict(PARAMS[name], {k: float(v[0]) for k, v in X.items()})
    np.testing.assert_allclose(scalar, one[0])


def test_predict_names_a_missing_input():
    with pytest.raises(LawFitError, match="needs inputs N, D, U; missing U"):
        FORMS["data_constrained"].predict(PARAMS["data_constrained"], {"N": 1e8, "D": 1e9})
