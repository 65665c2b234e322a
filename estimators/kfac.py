"""``kfac`` and ``ekfac``: Kronecker-factored approximations of the Gauss-Newton matrix, one block per ``Linear`` or
``Conv2d`` layer, inverted in the factors' eigenbasis (Martens & Grosse, ICML 2015; George, Laurent, Bouthillier,
Ballas & Vincent, NeurIPS 2018; for influence, Grosse et al., "Studying Large Language Model Generalization with
Influence Functions", 2023).

The factors, the eigenvalue correction and the damped inverse are curvlinops' (``curvlinops-for-pytorch``:
``KFACLinearOperator``, ``EKFACLinearOperator``, ``KFACInverseLinearOperator``), a maintained library whose operators
are tested against dense GGNs; this module maps the harness's problem onto them.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor

from benchmark import LAYERS, Estimator, EstimatorFailed, Problem, ScopedEstimator, hookimpl, non_negative, positive

FISHER_TYPES = ("type-2", "mc", "empirical")
"""``type-2``: the exact expectation over the model's predictive distribution, i.e. the generalised Gauss-Newton
matrix (one backward pass per output); ``mc``: one label sampled from it per example; ``empirical``: the observed
labels' gradients (the empirical Fisher)."""
APPROXIMATIONS = ("expand", "reduce")
"""How a layer that shares its weights (a convolution's positions) is factored (Eschenhagen et al., NeurIPS 2023)."""


@dataclasses.dataclass
class KFACConfig:
    """Hyperparameters of :class:`KFAC` and :class:`EKFAC`.

    Attributes:
        damping: ``lambda``, added exactly to the Kronecker-factored matrix: ``(K + (lambda + weight_decay) I)^-1``.
        fisher: the curvature the factors approximate, one of :data:`FISHER_TYPES`.
        approximation: K-FAC's treatment of weight sharing, one of :data:`APPROXIMATIONS`.
        layers: ``all`` layers, or ``last``: only the model's last module is factored, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
        batch_size: training examples per pass when the factors are accumulated.
        seed: seed of the sampled labels (``fisher: mc`` only).
    """

    damping: float = 0.001
    fisher: str = dataclasses.field(default="type-2", metadata={"choices": FISHER_TYPES})
    approximation: str = dataclasses.field(default="expand", metadata={"choices": APPROXIMATIONS})
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(batch_size=self.batch_size)


class KFAC(ScopedEstimator):
    """iHVP with the Kronecker-factored approximation ``G_l (x) A_l`` of each layer's block of the Gauss-Newton matrix.

    **The matrix.** For a ``Linear`` or ``Conv2d`` layer ``l`` with inputs ``a`` (a convolution's unfolded patches)
    and output gradients ``g``, its block of ``(1/n) sum_i J_i^T H_out,i J_i`` is approximated by ``G_l (x) A_l`` with
    ``A_l = E[a a^T]`` and ``G_l = E[g g^T]``; blocks of different layers are taken as zero. A layer's weight and bias
    form one block (the bias as a constant input, as Martens & Grosse do). ``fisher`` states whose output gradients
    ``g`` are: ``type-2`` backpropagates the columns of a square root of the loss's output Hessian, so for the
    harness's cross-entropy losses ``K`` approximates the GGN, which equals the Fisher there.

    **The inverse.** The problem's objective adds ``weight_decay * I`` to its curvature, so the iHVP is
    ``(K + (damping + weight_decay) I)^-1 v``, inverted exactly in the eigenbasis of ``A_l`` and ``G_l``
    (``use_exact_damping``), not with the factored ``(A + pi sqrt(lambda) I) (x) (G + ...)`` heuristic.

    **Scope.** Every parameter must belong to a ``Linear`` or ``Conv2d`` module, and the task must hand over its
    network (:meth:`Problem.network_at`); otherwise :meth:`prepare` fails with the reason.

    Cost: one pass over the training set (``C`` backward passes per batch for ``type-2``, ``C`` the outputs) and one
    eigendecomposition per factor to prepare, shared by every test point; each query two products with the factors'
    eigenvectors per layer, for all its right-hand sides at once. Diagnostics: per factored layer, the smallest and
    largest eigenvalue of ``K``'s block and its trace.
    """

    name = "kfac"
    Config = KFACConfig
    damping_field = "damping"
    operator: ClassVar[str] = "KFACLinearOperator"
    """The curvlinops class of the factored matrix (imported on first use: curvlinops takes half a second to import
    and warns about ``torch.jit.script`` as it does, which every ``bench`` command would otherwise pay)."""

    def prepare_scope(self, problem: Problem) -> None:
        c = self.config
        try:
            network = problem.network_at()
        except NotImplementedError as error:
            raise EstimatorFailed(str(error)) from error
        parameters = dict(network.module.named_parameters())
        data = [(problem.x_train[rows], problem.y_train[rows]) for rows in problem.train_slices(c.batch_size)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            curvlinops = importlib.import_module("curvlinops")
        try:
            curvature = getattr(curvlinops, self.operator)(
                network.module,
                network.loss,
                [parameters[name] for name in problem.params],  # the order of the flat theta
                data,
                check_deterministic=False,
                seed=c.seed,
                fisher_type=c.fisher,
                kfac_approx=c.approximation,
                separate_weight_and_bias=False,
                num_data=problem.n_train,
            )
        except NotImplementedError as error:  # curvlinops: parameters outside Linear and Conv2d layers
            raise EstimatorFailed(f"{self.name} factors Linear and Conv2d layers only: {error}") from error
        self._inverse = curvlinops.KFACInverseLinearOperator(
            curvature, damping=c.damping + problem.weight_decay, use_exact_damping=True
        )
        # curvlinops computes the factors, the correction and their eigenvectors lazily, on the first product: one
        # product here keeps that work in the preparation, where the harness times it
        self._inverse @ torch.zeros(problem.n_params, 1, dtype=problem.dtype, device=problem.device)
        eigenvalues = self._eigenvalues(curvature.state_dict())
        self.diagnostics = {
            "eigenvalue_range": {layer: [float(v.min()), float(v.max())] for layer, v in eigenvalues.items()},
            "trace": {layer: float(values.sum()) for layer, values in eigenvalues.items()},
        }

    def _eigenvalues(self, state: dict[str, Any]) -> dict[str, Tensor]:
        """Per factored layer, the eigenvalues of its block of ``K`` (without damping), in float64."""
        out = {}
        for layer, input_covariance in state["input_covariances"].items():
            values_a = torch.linalg.eigvalsh(input_covariance.double())
            values_g = torch.linalg.eigvalsh(state["gradient_covariances"][layer].double())
            out[layer] = torch.outer(values_g, values_a).reshape(-1)
        return out

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        return (self._inverse @ vectors.T).T


class EKFAC(KFAC):
    """K-FAC in its eigenbasis with the eigenvalues corrected (George et al. 2018): ``Q (D + lambda I)^-1 Q^T`` with
    ``Q = Q_G (x) Q_A`` and ``D`` the second moments of the per-example gradients projected on ``Q``, instead of
    ``Lambda_G (x) Lambda_A``; the best diagonal in that basis in Frobenius norm, so never further from the GGN than
    K-FAC. Everything else (hyperparameters, scope, damping with weight decay) is :class:`KFAC`'s. Preparation costs
    one more pass over the training set, for the correction. Diagnostics: per layer the smallest and largest
    corrected eigenvalue and their sum."""

    name = "ekfac"
    operator = "EKFACLinearOperator"

    def _eigenvalues(self, state: dict[str, Any]) -> dict[str, Tensor]:
        out = {}
        for layer, values in state["corrected_eigenvalues"].items():
            values = values if isinstance(values, Tensor) else torch.cat([v.reshape(-1) for v in values.values()])
            out[layer] = values.double().reshape(-1)
        return out


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [KFAC, EKFAC]
