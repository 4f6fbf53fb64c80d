"""Closed-form block updates of the cross-model objective vs brute-force minimisation."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax

from commonspace.learning.objective import Problem
from commonspace.learning.relevance import build_relevance


def brute_u_objective(U_blocks, R, Y, F, Lam, Theta, rho, alpha, beta, loss):
    """The U-subproblem written out with explicit loops over pairs (independent of Problem):
    the relevance term is the mean over the related pairs, the label term the mean over the
    labelled modalities."""
    val = 0.0
    for (a, b), Rab in R.items():
        s = 0.0
        for i in range(Rab.shape[0]):
            for j in range(Rab.shape[1]):
                s += Rab[i, j] * np.sum((U_blocks[a][i] - U_blocks[b][j]) ** 2)
        val += alpha * s / Rab.sum() / len(R)
    for k, U in U_blocks.items():
        n = U.shape[0]
        if k in Y:
            Z = U @ Theta
            if loss == "squared":
                val += beta * np.mean(np.sum((Z - Y[k]) ** 2, axis=1)) / len(Y)
            else:
                val += -beta * np.mean(np.sum(log_softmax(Z, axis=1) * Y[k], axis=1)) / len(Y)
        D = U - F[k]
        val += (np.sum(Lam[k] * D) + 0.5 * rho * np.sum(D ** 2)) / n
    return val


def setup(relevance_kind, loss="squared", seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"a": 7, "b": 5, "c": 6} if relevance_kind == "sparse3" else {"a": 7, "b": 5}
    C, r = 3, 4
    labels = {k: rng.integers(0, C, n) for k, n in sizes.items()}
    for k in labels:
        labels[k][:C] = np.arange(C)  # every class present
    if relevance_kind == "labels":
        rel = build_relevance(sizes, labels, "labels", C)
        dense = {key: rel[key].block(np.arange(sizes[key[0]]), np.arange(sizes[key[1]]))
                 for key in rel}
    else:
        dense = {}
        names = list(sizes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                M = rng.random((sizes[a], sizes[b])) * (rng.random((sizes[a], sizes[b])) < 0.5)
                M[0, 0] = 1.0
                dense[(a, b)] = M
        rel = build_relevance(sizes, labels, dense, C)
    prob = Problem(sizes, rel, labels, C, alpha=0.7, beta=1.3, loss=loss)
    F = {k: rng.normal(size=(n, r)) for k, n in sizes.items()}
    Lam = {k: rng.normal(size=(n, r)) * 0.3 for k, n in sizes.items()}
    Theta = rng.normal(size=(r, C))
    Y = {k: np.eye(C)[labels[k]] for k in sizes}
    return prob, sizes, dense, Y, F, Lam, Theta


def stack(prob, blocks):
    return np.concatenate([blocks[k] for k in prob.names])


def unstack(prob, U):
    return {k: U[prob.slice(k)] for k in prob.names}


@pytest.mark.parametrize("kind", ["labels", "sparse", "sparse3"])
def test_u_step_matches_brute_force(kind):
    prob, sizes, dense, Y, F, Lam, Theta = setup(kind)
    rho = 2.5
    U = prob.u_step(stack(prob, F), stack(prob, Lam), Theta, rho)

    def f(x):
        return brute_u_objective(unstack(prob, x.reshape(U.shape)), dense, Y, F, Lam, Theta,
                                 rho, prob.alpha, prob.beta, "squared")

    ref = minimize(f, stack(prob, F).ravel(), method="L-BFGS-B",
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10}).x
    assert f(U.ravel()) <= f(ref) + 1e-9
    np.testing.assert_allclose(U.ravel(), ref, atol=1e-4)


def test_theta_step_is_the_ridge_solution():
    prob, sizes, dense, Y, F, Lam, Theta = setup("labels")
    U = stack(prob, F)
    gamma = 0.05
    T = prob.theta_step(U, gamma)

    def f(t):
        t = t.reshape(T.shape)
        val = sum(prob.beta * np.mean(np.sum((F[k] @ t - Y[k]) ** 2, axis=1))
                  for k in sizes) / len(sizes)
        return val + gamma * np.sum(t ** 2)

    ref = minimize(f, np.zeros(T.size), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(T.ravel(), ref, atol=1e-5)


def test_softmax_steps_reach_the_minimum():
    prob, sizes, dense, Y, F, Lam, Theta = setup("labels", loss="softmax")
    rho = 1.5
    U = prob.u_step(stack(prob, F), stack(prob, Lam), Theta, rho, newton_iter=500)

    def f(x):
        return brute_u_objective(unstack(prob, x.reshape(U.shape)), dense, Y, F, Lam, Theta,
                                 rho, prob.alpha, prob.beta, "softmax")

    ref = minimize(f, np.zeros(U.size), method="BFGS", options={"gtol": 1e-9}).x
    assert abs(f(U.ravel()) - f(ref)) < 1e-6
    T = prob.theta_step(U, 0.1, newton_iter=500)

    def g(t):
        t = t.reshape(T.shape)
        val = sum(-prob.beta * np.mean(np.sum(log_softmax(U[prob.slice(k)] @ t, axis=1) * Y[k],
                                              axis=1)) for k in sizes) / len(sizes)
        return val + 0.1 * np.sum(t ** 2)

    ref_t = minimize(g, np.zeros(T.size), method="BFGS", options={"gtol": 1e-9}).x
    np.testing.assert_allclose(T.ravel(), ref_t, atol=1e-4)


def test_relevance_term_equals_pairwise_sum():
    prob, sizes, dense, Y, F, Lam, Theta = setup("sparse3")
    U = stack(prob, F)
    expected = 0.0
    for (a, b), M in dense.items():
        d2 = ((F[a][:, None, :] - F[b][None, :, :]) ** 2).sum(-1)
        expected += prob.alpha * (M * d2).sum() / M.sum() / len(dense)
    assert prob.relevance_term(U) == pytest.approx(expected, rel=1e-10)
