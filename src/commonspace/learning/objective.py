"""The cross-model objective and its closed-form block updates (NumPy, float64).

All modalities' common-space vectors are stacked into one ``(N, r)`` matrix (``N = sum n_k``,
modality blocks in fit order). The objective is

Both data terms are means, so that ``alpha`` and ``beta`` mean the same for 2 or 6 modalities and
for 100 or 100,000 items: the relevance term is the mean over the ``P = K (K - 1) / 2`` related
modality pairs of the relevance-weighted mean squared distance, and the label term the mean over
the ``K_l`` labelled modalities of the per-item mean loss:

    J = alpha * (1 / P) sum_{k<k'} (1 / sum R^{kk'}) sum_ij R^{kk'}_ij ||u_i^k - u_j^{k'}||^2
      + beta  * (1 / K_l) sum_k mean_{i labelled} L(Theta^T u_i^k, y_i^k)
      + gamma * (sum_k ||W^k||^2 + ||Theta||^2)

(summing over pairs instead, as the first version did, made the relevance term of 6 modalities
start 15x its 2-modality size and swamp the label term; the test on real data checks that the
terms at initialisation stay within a small factor for K = 2..6).

The relevance term equals ``alpha * tr(U^T Lap U)`` with ``Lap = D - A`` the Laplacian of the
cross-modal graph (``A`` holds ``R^{kk'} / (P sum R^{kk'})`` in its off-diagonal blocks). The equality
constraints ``U^k = F^k`` enter the augmented Lagrangian with weight ``1 / n_k``:
``sum_k (1/n_k) (<Lambda^k, U^k - F^k> + rho/2 ||U^k - F^k||^2)``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax


class Problem:
    """The data-dependent parts of the objective: relevance graph, labels, weights.

    Parameters
    ----------
    sizes : dict modality -> n_k (fit order).
    relevance : dict (k, k') -> LabelRelevance | SparseRelevance.
    labels : dict modality -> (n_k,) int labels in 0..C-1, -1 = unlabelled (missing = none).
    n_classes : C (0 when there are no labels).
    """

    def __init__(self, sizes, relevance, labels, n_classes, alpha, beta, loss="squared"):
        self.names = list(sizes)
        self.sizes = dict(sizes)
        self.offsets = dict(zip(self.names, np.cumsum([0] + [sizes[k] for k in self.names])[:-1],
                                strict=True))
        self.N = int(sum(sizes.values()))
        self.relevance = relevance
        self.alpha, self.beta, self.loss = float(alpha), float(beta), loss
        self.C = int(n_classes)
        y = np.full(self.N, -1, dtype=np.int64)
        # 1 / (labelled items of the modality * labelled modalities), 0 if unlabelled
        self.label_weight = np.zeros(self.N)
        self.penalty_weight = np.zeros(self.N)  # 1 / n_k
        for k in self.names:
            sl = self.slice(k)
            self.penalty_weight[sl] = 1.0 / sizes[k]
            if labels and k in labels:
                yk = np.asarray(labels[k], dtype=np.int64)
                y[sl] = yk
                n_lab = int((yk >= 0).sum())
                if n_lab:
                    self.label_weight[sl] = (yk >= 0) / n_lab
        n_labelled = sum(1 for k in self.names if self.label_weight[self.slice(k)].any())
        self.label_weight /= max(n_labelled, 1)
        self.modality_weight = 1.0 / max(n_labelled, 1)  # the 1 / K_l above
        self.pair_weight = 1.0 / max(len(relevance), 1)  # the 1 / P above
        self.y = y
        self.labelled = y >= 0
        self.Y = np.zeros((self.N, max(self.C, 1)))
        self.Y[np.flatnonzero(self.labelled), y[self.labelled]] = 1.0
        self.degree = np.zeros(self.N)
        for (k, k2), rel in relevance.items():
            self.degree[self.slice(k)] += rel.row_sums() * self.pair_weight / rel.total
            self.degree[self.slice(k2)] += rel.col_sums() * self.pair_weight / rel.total

    def slice(self, k):
        o = int(self.offsets[k])
        return slice(o, o + self.sizes[k])

    # ---- relevance term -------------------------------------------------------------------
    def laplacian_matmul(self, X):
        """``Lap @ X`` for ``X`` of shape (N, r)."""
        out = self.degree[:, None] * X
        for (k, k2), rel in self.relevance.items():
            a, b = self.slice(k), self.slice(k2)
            w = self.pair_weight / rel.total
            out[a] -= w * rel.matmul(X[b])
            out[b] -= w * rel.rmatmul(X[a])
        return out

    def relevance_term(self, U):
        """``alpha * mean_pairs sum_ij R_ij ||u_i - u_j||^2 / sum R``."""
        return self.alpha * float(np.sum(U * self.laplacian_matmul(U)))

    # ---- label term -----------------------------------------------------------------------
    def label_term(self, U, Theta):
        if self.C == 0 or not self.labelled.any():
            return 0.0
        Z = U @ Theta
        if self.loss == "squared":
            per_item = ((Z - self.Y) ** 2).sum(axis=1)
        else:
            per_item = -(log_softmax(Z, axis=1) * self.Y).sum(axis=1)
        return self.beta * float(self.label_weight @ per_item)

    # ---- closed-form / quasi-Newton block updates -------------------------------------------
    def theta_step(self, U, gamma, Theta0=None, newton_iter=20):
        """Theta minimising the label term + ``gamma ||Theta||^2`` (ridge; L-BFGS for softmax)."""
        r = U.shape[1]
        if self.C == 0 or self.beta == 0:
            return np.zeros((r, max(self.C, 1)))
        Uw = U * self.label_weight[:, None]
        if self.loss == "squared":
            lhs = self.beta * (U.T @ Uw) + gamma * np.eye(r)
            return np.linalg.solve(lhs, self.beta * (Uw.T @ self.Y))

        def f(t):
            T = t.reshape(r, self.C)
            Z = U @ T
            logp = log_softmax(Z, axis=1)
            val = -self.beta * float(self.label_weight @ (logp * self.Y).sum(axis=1))
            grad = self.beta * (Uw.T @ (np.exp(logp) - self.Y)) + 2 * gamma * T
            return val + gamma * float((T ** 2).sum()), grad.ravel()

        t0 = np.zeros(r * self.C) if Theta0 is None else Theta0.ravel()
        res = minimize(f, t0, jac=True, method="L-BFGS-B", options={"maxiter": newton_iter})
        return res.x.reshape(r, self.C)

    def u_step(self, F, Lam, Theta, rho, U0=None, newton_iter=20, cg_tol=1e-10):
        """U minimising relevance + label + augmented terms for fixed F, Lambda, Theta, rho.

        Squared loss: the stationarity condition
        ``2a Lap U + 2b Dl U Theta Theta^T + rho Dp U = 2b Dl Y Theta^T - Dp Lam + rho Dp F``
        (``Dl``, ``Dp`` diagonal label / penalty weights) decouples into ``r`` linear systems
        after rotating by the eigenvectors of ``Theta Theta^T``; each is solved exactly with the
        Woodbury identity when every relevance is label-based (``A`` is low rank through the
        class indicators) and by preconditioned conjugate gradient otherwise.
        """
        pw, lw = self.penalty_weight[:, None], self.label_weight[:, None]
        if self.loss != "squared":
            return self._u_step_softmax(F, Lam, Theta, rho, U0, newton_iter)
        M = Theta @ Theta.T if self.C else np.zeros((F.shape[1], F.shape[1]))
        s, V = np.linalg.eigh(M)
        s = np.maximum(s, 0.0)
        B = 2 * self.beta * lw * (self.Y @ Theta.T) - pw * Lam + rho * pw * F
        Bv = B @ V
        # Diagonal part of each column's system (N, r).
        diag = (2 * self.alpha * self.degree[:, None] + 2 * self.beta * lw * s[None, :]
                + rho * pw)
        if all(rel.kind == "labels" for rel in self.relevance.values()):
            Uv = self._woodbury_solve(diag, Bv)
        else:
            X0 = None if U0 is None else U0 @ V
            Uv = self._batched_cg(diag, Bv, X0, cg_tol)
        return Uv @ V.T

    def _woodbury_solve(self, diag, B):
        """Solve ``(diag_c - 2a A) x_c = b_c`` for every column c with ``A = P H P^T``."""
        C, names = self.C, self.names
        K = len(names)
        cls = np.full(self.N, -1)
        for j, k in enumerate(names):
            sl = self.slice(k)
            cls[sl] = np.where(self.y[sl] >= 0, j * C + self.y[sl], -1)
        H = np.zeros((K * C, K * C))
        for (k, k2), rel in self.relevance.items():
            a, b = names.index(k), names.index(k2)
            idx = np.arange(C)
            H[a * C + idx, b * C + idx] = H[b * C + idx, a * C + idx] = (self.pair_weight
                                                                         / rel.total)
        G = 2 * self.alpha * H
        inv = 1.0 / diag  # (N, r)
        rows = np.flatnonzero(cls >= 0)

        def pt(X):  # P^T X: class-wise sums per modality, (K*C, r)
            out = np.zeros((K * C, X.shape[1]))
            np.add.at(out, cls[rows], X[rows])
            return out

        Q = pt(inv)  # diagonal of P^T diag^{-1} P, one per column: (K*C, r)
        y0 = inv * B
        rhs = G @ pt(y0)  # (K*C, r)
        system = np.eye(K * C)[None] - G[None] * Q.T[:, None, :]  # (r, KC, KC): I - G diag(Q_c)
        z = np.linalg.solve(system, rhs.T[:, :, None])[:, :, 0].T  # (K*C, r)
        X = y0.copy()
        X[rows] += inv[rows] * z[cls[rows]]
        return X

    def _batched_cg(self, diag, B, X0, tol, maxiter=2000):
        """Jacobi-preconditioned CG for ``(2a Lap + diag(diag_c)) x_c = b_c``, all columns."""
        def apply(X):
            return 2 * self.alpha * self.laplacian_matmul(X) + (diag - 2 * self.alpha
                                                              * self.degree[:, None]) * X

        X = np.zeros_like(B) if X0 is None else X0.copy()
        R = B - apply(X)
        Z = R / diag
        P = Z.copy()
        rz = (R * Z).sum(axis=0)
        bnorm = np.maximum(np.linalg.norm(B, axis=0), 1e-300)
        for _ in range(maxiter):
            if (np.linalg.norm(R, axis=0) <= tol * bnorm).all():
                break
            AP = apply(P)
            step = rz / np.maximum((P * AP).sum(axis=0), 1e-300)
            X += step * P
            R -= step * AP
            Z = R / diag
            rz_new = (R * Z).sum(axis=0)
            P = Z + (rz_new / np.maximum(rz, 1e-300)) * P
            rz = rz_new
        return X

    def _u_step_softmax(self, F, Lam, Theta, rho, U0, newton_iter):
        pw, lw = self.penalty_weight[:, None], self.label_weight[:, None]
        shape = F.shape

        def f(x):
            U = x.reshape(shape)
            LU = self.laplacian_matmul(U)
            Z = U @ Theta
            logp = log_softmax(Z, axis=1)
            D = U - F
            val = (self.alpha * float(np.sum(U * LU))
                   - self.beta * float(self.label_weight @ (logp * self.Y).sum(axis=1))
                   + float(np.sum(pw * (Lam * D + 0.5 * rho * D ** 2))))
            grad = (2 * self.alpha * LU + self.beta * lw * ((softmax(Z, axis=1) - self.Y)
                                                            @ Theta.T) + pw * (Lam + rho * D))
            return val, grad.ravel()

        x0 = (F if U0 is None else U0).ravel()
        res = minimize(f, x0, jac=True, method="L-BFGS-B", options={"maxiter": newton_iter})
        return res.x.reshape(shape)
