"""Scaling-law forms: the loss predicted from model size N, tokens trained on D and unique tokens U.

Every form is an irreducible loss E plus power-law terms, and every form is computed the way Hoffmann et al.
(2022, "Training Compute-Optimal Large Language Models", §3.3 and Appendix D.2) fit it, as a log-sum-exp:

    log L = LSE(e, a - alpha * log N, b - beta * log D),        E = exp(e), A = exp(a), B = exp(b)

so that fitting (fit.py) works on log loss with unconstrained log coefficients. The forms:

    data                L(D)       = E + B / D^beta
    model               L(N)       = E + A / N^alpha
    chinchilla          L(N, D)    = E + A / N^alpha + B / D^beta          Hoffmann et al. 2022, eq. (2)
    data_constrained    L(N, D, U) = E + A / N'^alpha + B / D'^beta        Muennighoff et al. 2023, §3
    data_constrained_D  L(D, U)    = E + B / D'^beta                       the same, one model size

The data-constrained law (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", §3 and the
derivation in its Appendix A; checked against the authors' reference code, github.com/huggingface/datablations,
README "Parametric Fit") replaces tokens and parameters by their effective amounts:

    U_D = min(U, D)                                    unique tokens seen
    R   = D / U_D - 1                                  repeated epochs beyond the first (R_D in the paper)
    D'  = U_D + U_D * R_D * (1 - exp(-R / R_D))        effective data; R_D is the paper's R_D*
    U_N = min(N, N_opt(U_D))                           the parameters U_D unique tokens can use
    N_opt(U_D) = (alpha * A / (beta * B))^(1 / alpha) * U_D^(beta / alpha)
    R_NX = N / U_N - 1                                 excess parameters (R_N in the paper)
    N'  = U_N + U_N * R_N * (1 - exp(-R_NX / R_N))     effective parameters; R_N is the paper's R_N*

N_opt(U_D) is the compute-optimal model size for U_D tokens under the law's own A, alpha, B, beta: at the optimum
of L subject to C = 6ND, alpha * A * N^-alpha = beta * B * D^-beta, which solved for N is the line above (the
paper's N_opt = G (C/6)^(beta/(alpha+beta)) at D = U_D, as in the reference code). The paper fits A, alpha, B, beta
on single-epoch runs first and R_D, R_N afterwards; here all seven are fitted jointly, and U_N follows the
parameters being fitted.

D is every token trained on, repeats included; U is the unique tokens available (U > D means D tokens drawn from
a larger pool: one epoch, as the paper's U_D = min(D_C, D)). With one epoch and N <= N_opt(U_D) the law is
chinchilla exactly. R_D and R_N are decay constants: each repeat, and each excess parameter, is worth less than the
one before, so D' never exceeds U_D * (1 + R_D) and N' never exceeds U_N * (1 + R_N).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from scalelab.errors import ScalelabError

EXPONENTS = frozenset({"alpha", "beta"})
# A decay constant outside this range makes no difference to any design a study can run; bounding it keeps an
# unidentified R (e.g. no excess-parameter runs) from drifting without end.
DECAY_RANGE = (1e-2, 1e4)
HOFFMANN_GRID = {"e": (-1.0, -0.5, 0.0, 0.5, 1.0), "coef": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
                 "exponent": (0.0, 0.5, 1.0, 1.5, 2.0)}


class LawFitError(ScalelabError):
    """Points cannot be fitted by the asked law: too few, invalid values, or a design that cannot separate its
    parameters."""


class LawForm(ABC):
    """A law: loss as E plus power-law terms in (effective) inputs, computed as a log-sum-exp.

    Parameters have two spellings: natural (E, A, alpha, ... as in the papers; what `predict` takes and a fit
    reports) and internal `theta`, where E, A, B and the decay constants are logs and exponents stay as they are.
    """

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]]
    inputs: ClassVar[tuple[str, ...]]
    terms: ClassVar[tuple[tuple[str, str, str], ...]]  # (coefficient, exponent, input) of each power-law term
    exponent_floor: ClassVar[float] = 0.0

    def predict(self, params: Mapping[str, float] | np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """The loss at X. `params` is a mapping by name, or an array (..., n_params) in `self.params` order; the
        result has shape params' leading shape + the broadcast shape of the inputs."""
        missing = [name for name in self.inputs if name not in X]
        if missing:
            raise LawFitError(f"the {self.name!r} law needs inputs {', '.join(self.inputs)}; "
                              f"missing {', '.join(missing)}")
        values = np.broadcast_arrays(*(np.asarray(X[name], dtype=float) for name in self.inputs))
        shape = values[0].shape
        Z = self.design({name: v.ravel() for name, v in zip(self.inputs, values, strict=True)})
        if isinstance(params, Mapping):
            params = np.array([params[name] for name in self.params], dtype=float)
        theta = self.to_theta(np.asarray(params, dtype=float))
        loss = np.exp(self.log_loss(theta, Z))
        return loss.reshape(theta.shape[:-1] + shape)

    def to_theta(self, natural: np.ndarray) -> np.ndarray:
        theta = np.array(natural, dtype=float)
        logged = [i for i, name in enumerate(self.params) if name not in EXPONENTS]
        theta[..., logged] = np.log(theta[..., logged])
        return theta

    def from_theta(self, theta: np.ndarray) -> np.ndarray:
        natural = np.array(theta, dtype=float)
        logged = [i for i, name in enumerate(self.params) if name not in EXPONENTS]
        natural[..., logged] = np.exp(natural[..., logged])
        return natural

    def design(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What `log_loss` reads, computed once per set of points: the log of every input."""
        return {name: np.log(X[name]) for name in self.inputs}

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Box constraints on theta for L-BFGS-B."""
        decay = (float(np.log(DECAY_RANGE[0])), float(np.log(DECAY_RANGE[1])))
        return [(self.exponent_floor, None) if name in EXPONENTS else decay if name.startswith("R_") else
                (None, None) for name in self.params]

    def grid(self) -> np.ndarray:
        """Starting points (n_starts, n_params) in theta: the grid of Hoffmann et al. (2022, Appendix D.2),
        alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, plus two decay
        constants each for the data-constrained forms."""
        axes = []
        for name in self.params:
            if name == "E":
                axes.append(HOFFMANN_GRID["e"])
            elif name in EXPONENTS:
                axes.append(tuple(max(v, self.exponent_floor) for v in HOFFMANN_GRID["exponent"]))
            elif name.startswith("R_"):
                axes.append((float(np.log(2.0)), float(np.log(15.0))))
            else:
                axes.append(HOFFMANN_GRID["coef"])
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)

    def log_input(self, name: str, theta: np.ndarray, Z: Mapping[str, np.ndarray],
                  jac: bool) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """log of the (effective) input `name` and, with `jac`, its derivatives as (theta index, d/dtheta)."""
        return Z[name], []

    def log_loss(self, theta: np.ndarray, Z: Mapping[str, np.ndarray], jac: bool = False):
        """log L at the points of Z: shape theta.shape[:-1] + (n,). With `jac`, theta is one point (n_params,) and
        the Jacobian (n, n_params) comes too."""
        index = {name: i for i, name in enumerate(self.params)}
        n = next(iter(Z.values())).shape[-1]
        columns = [np.broadcast_to(theta[..., index["E"], None], theta.shape[:-1] + (n,))]
        derivatives: list[list[tuple[int, np.ndarray | float]]] = [[(index["E"], 1.0)]]
        for coef, exponent, name in self.terms:
            i, k = index[coef], index[exponent]
            x, dx = self.log_input(name, theta, Z, jac)
            columns.append(theta[..., i, None] - theta[..., k, None] * x)
            if jac:
                derivatives.append([(i, 1.0), (k, -x)] + [(j, -theta[k] * d) for j, d in dx])
        T = np.stack(columns, axis=-1)
        top = T.max(axis=-1, keepdims=True)
        weights = np.exp(T - top)
        total = weights.sum(axis=-1, keepdims=True)
        f = (top + np.log(total))[..., 0]
        if not jac:
            return f
        share = weights / total  # d LSE / d column
        J = np.zeros((n, len(self.params)))
        for column, pairs in enumerate(derivatives):
            for j, d in pairs:
                J[:, j] += share[:, column] * d
        return f, J


class DataLaw(LawForm):
    name = "data"
    params = ("E", "B", "beta")
    inputs = ("D",)
    terms = (("B", "beta", "D"),)


class ModelLaw(LawForm):
    name = "model"
    params = ("E", "A", "alpha")
    inputs = ("N",)
    terms = (("A", "alpha", "N"),)


class ChinchillaLaw(LawForm):
    name = "chinchilla"
    params = ("E", "A", "alpha", "B", "beta")
    inputs = ("N", "D")
    terms = (("A", "alpha", "N"), ("B", "beta", "D"))


def _effective(log_total: np.ndarray, log_unique: np.ndarray, log_decay: np.ndarray, jac: bool):
    """log(U + U * R* * (1 - exp(-(T / U - 1) / R*))) for a total amount T of which U is unique, and with `jac` its
    derivatives in log R* and in log U (T held fixed)."""
    # Past T/U = e^700 the result no longer changes; the cap keeps the derivatives finite there.
    log_over = np.minimum(np.maximum(log_total - log_unique, 0.0), 700.0)
    decay = np.exp(log_decay)
    ratio = np.expm1(log_over) / decay
    gained = -np.expm1(-ratio)  # 1 - exp(-X / R*), accurate for small X
    value = log_unique + np.log1p(decay * gained)
    if not jac:
        return value, None, None
    denominator = 1.0 + decay * gained
    d_log_decay = decay * (gained - ratio * np.exp(-ratio)) / denominator
    d_log_unique = 1.0 - np.exp(log_over - ratio) / denominator
    return value, d_log_decay, d_log_unique


class DataConstrainedDLaw(LawForm):
    name = "data_constrained_D"
    params = ("E", "B", "beta", "R_D")
    inputs = ("D", "U")
    terms = (("B", "beta", "D"),)

    def design(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        Z = super().design(X)
        Z["U"] = np.minimum(Z["U"], Z["D"])  # U_D: of a pool larger than D, only D tokens are seen
        return Z

    def log_input(self, name, theta, Z, jac):
        r = self.params.index("R_D")
        value, d_log_decay, _ = _effective(Z["D"], Z["U"], theta[..., r, None], jac)
        return value, ([(r, d_log_decay)] if jac else [])


class DataConstrainedLaw(DataConstrainedDLaw):
    name = "data_constrained"
    params = ("E", "A", "alpha", "B", "beta", "R_D", "R_N")
    inputs = ("N", "D", "U")
    terms = (("A", "alpha", "N"), ("B", "beta", "D"))
    exponent_floor = 1e-3  # N_opt(U) divides by both exponents

    def log_input(self, name, theta, Z, jac):
        if name == "D":
            return super().log_input(name, theta, Z, jac)
        a, alpha, b, beta, r = (self.params.index(p) for p in ("A", "alpha", "B", "beta", "R_N"))
        alpha_, beta_ = theta[..., alpha, None], theta[..., beta, None]
        log_n_opt = (np.log(alpha_) + theta[..., a, None] - np.log(beta_) - theta[..., b, None]
                     + beta_ * Z["U"]) / alpha_
        log_unique = np.minimum(Z["N"], log_n_opt)  # log U_N
        value, d_log_decay, d_log_unique = _effective(Z["N"], log_unique, theta[..., r, None], jac)
        if not jac:
            return value, []
        # d_log_unique is 0 wherever N <= N_opt(U), so U_N = N carries no parameter dependence through it.
        d_log_n_opt = {a: 1.0 / alpha_, b: -1.0 / alpha_, alpha: (1.0 / alpha_ - log_n_opt) / alpha_,
                       beta: (Z["U"] - 1.0 / beta_) / alpha_}
        return value, [(r, d_log_decay)] + [(j, d_log_unique * d) for j, d in d_log_n_opt.items()]


FORMS: dict[str, LawForm] = {form.name: form for form in (DataLaw(), ModelLaw(), ChinchillaLaw(),
                                                         DataConstrainedLaw(), DataConstrainedDLaw())}
