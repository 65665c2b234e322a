"""``trak``: TRAK (Park, Georgiev, Ilyas, Leclerc & Madry, "TRAK: Attributing Model Behavior at Scale", ICML 2023),
random projections of per-example gradients of the model's margin, a least-squares solve in the projected space and an
average over an ensemble of independently trained models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vmap

from benchmark import Estimator, EstimatorFailed, Problem, hookimpl, non_negative, positive
from benchmark.numerics.projection import PROJECTIONS, projection_matrix


@dataclasses.dataclass
class TRAKConfig:
    """Hyperparameters of :class:`TRAK`.

    Attributes:
        projection_dim: the dimension ``k`` gradients are projected to (``traker``'s ``proj_dim``, default 2048). At
            ``k >= P`` the gradients are used as they are: a projection to as many dimensions or more only adds noise.
        models: how many independently trained models to average over (:meth:`benchmark.Problem.ensemble`; with
            ``subset_fraction`` 1 the first is the evaluated optimum itself, so ``models=1`` trains nothing).
        subset_fraction: the share of the training set each ensemble member is trained on (the paper's ``alpha``,
            0.5 there; 1 trains every member on the whole set, as ``traker``'s quickstart does).
        projection: ``rademacher`` (``traker``'s default) or ``normal`` entries of the projection matrix.
        seed: the projection's seed (``traker``'s ``projector_seed``).
        regularization: ``lambda`` added to ``Phi^T Phi`` before the solve (``traker``'s ``lambda_reg``, default 0).
        traker_rescaling: divide each model's ``(Phi^T Phi)^-1`` by the mean absolute value of its entries, as
            ``traker`` 0.3.2 does, which weights an ensemble's models unequally (off: the paper's plain average).
    """

    projection_dim: int = 2048
    models: int = 1
    subset_fraction: float = 1.0
    projection: str = dataclasses.field(default="rademacher", metadata={"choices": PROJECTIONS})
    seed: int = 0
    regularization: float = 0.0
    traker_rescaling: bool = False

    def __post_init__(self) -> None:
        positive(projection_dim=self.projection_dim, models=self.models, subset_fraction=self.subset_fraction)
        non_negative(seed=self.seed, regularization=self.regularization)
        if self.subset_fraction > 1:
            raise ValueError(f"subset_fraction={self.subset_fraction} must be at most 1")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection={self.projection!r} is not one of {', '.join(PROJECTIONS)}")


class TRAK(Estimator):
    """TRAK: randomly projected gradients of the margin, a least-squares solve per model, averaged over an ensemble of
    ``M`` independently trained models ``theta_m``.

    The score of training point ``i`` for test point ``z``::

        tau(z)_i = [(1/M) sum_m phi_m(z)^T (Phi_m^T Phi_m + lambda I)^-1 phi_m(x_i)] * [(1/M) sum_m (1 - p_m(x_i))]

    where ``phi_m(x) = P_m^T grad_theta f(x; theta_m)`` is the projected gradient of the **margin**
    ``f = log(p / (1 - p))``, ``p`` the softmax probability of the correct class (``traker``'s
    ``ImageClassificationModelOutput``; for a binary ``BCEWithLogitsLoss`` problem ``f = (2y - 1) * logit``),
    ``Phi_m`` the ``[n, k]`` matrix of the training points' ``phi_m`` and ``1 - p_m(x_i)`` TRAK's out-to-loss weight
    ``Q``. The two averages are taken separately, as ``traker``'s ``finalize_scores`` does. One difference from
    ``traker`` 0.3.2: it divides each model's ``(Phi^T Phi)^-1`` by the mean absolute value of its entries ("to avoid
    numerical issues when going to float16"), which scales one model's scores by a constant and weights the models of
    an ensemble unequally; this is the paper's unweighted average unless ``traker_rescaling`` is set
    (``benchmark/peers/attribution_agreement.py`` and ``peer_tests/test_trak_against_traker.py`` measure both).

    **Sign and scale.** TRAK attributes the margin: ``tau_i`` is the predicted rise of the test point's margin due to
    training point ``i``'s presence. Removing it lowers the margin by ``tau_i``, and the test loss
    ``-log p = log(1 + exp(-f))`` changes by ``-dloss/df * tau_i = (1 - p(z)) tau_i`` (``p(z)`` at the evaluated
    optimum). So ``influence`` returns ``(1 - p(z)) tau(z)_i``: TRAK's sign kept (a positive score is a point whose
    removal raises the test loss, this harness's positive influence), each test row multiplied by a positive number
    (correlations per test point are TRAK's own).

    **Projection.** :func:`projection_matrix`, the same matrix as ``traker``'s CPU ``BasicProjector`` for the same seed
    and model index (``benchmark/peers`` compares the two), drawn whole while a model's training gradients are
    projected and drawn again per query (``traker`` draws it again per batch and block of 100 columns); kept between
    queries are the projected training gradients multiplied by the solve's root (``n * k`` per model).

    **Ensemble.** :meth:`benchmark.Problem.ensemble`: ``models - 1`` further models trained like the optimum from other
    seeds (or ``models`` on subsets); what training them cost is reported as the ``models_s`` timing, apart from this
    estimator's own preparation. A task without an ensemble (pretrained weights, no stated initialisation) makes
    ``models > 1`` a recorded failure.

    **Solve.** ``(Phi^T Phi + lambda I)^-1`` is applied as a pseudo-inverse from its eigendecomposition in the model's
    dtype (eigenvalues below ``k * eps`` times the largest left out): the minimum-norm least-squares solution,
    ``traker``'s inverse wherever ``Phi^T Phi`` is invertible. It is not where the margin is invariant along some
    directions (adding one constant to every logit moves no margin, so the last layer's gradients span ``width + 1``
    fewer dimensions than its parameters) and the gradients are not projected, as on Iris; nor, numerically, where the
    margin gradients' spectrum decays faster than ``k`` dimensions hold (the MNIST small CNN at ``k = 2048``).

    Cost: per model, one pass of per-example margin gradients over the training set and their projection, a
    ``k x k`` eigendecomposition; per query, test gradients and projections per model. No iHVP.

    Diagnostics: the members' seeds, the projection used, the rank of each ``Phi^T Phi`` the solve used.
    """

    name = "trak"
    Config = TRAKConfig
    no_ihvp = "projected margin gradients with a least-squares solve per ensemble model, no Hessian"
    query_rows = None  # a call redraws every model's projection matrix; the test features stream in gradient_rows

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        config = self.config
        self._margin = margin_function(problem)
        if config.models == 1 and config.subset_fraction == 1.0:
            thetas, seeds = problem.theta.unsqueeze(0), []
            self.models = {}
        else:
            try:
                ensemble = problem.ensemble(config.models, config.subset_fraction, self.progress)
            except (NotImplementedError, ValueError) as error:
                raise EstimatorFailed(f"trak needs an ensemble of {config.models} models: {error}") from error
            thetas, seeds = ensemble.thetas, list(ensemble.seeds)
            self.models = {
                "kind": "ensemble",
                "count": config.models,
                "seconds": ensemble.seconds,
                "from_cache": ensemble.from_cache == config.models,
                "seconds_now": ensemble.seconds_now,
            }
        self._projected = config.projection_dim < problem.n_params
        self._members: list[tuple[Tensor, Tensor, Tensor]] = []
        out_to_loss = torch.zeros(problem.n_train, dtype=problem.dtype, device=problem.device)
        ranks = []
        for model_id, theta in enumerate(thetas):
            theta = theta.to(problem.theta)
            matrix = self._matrix(model_id)
            features = self._features(theta, problem.x_train, problem.y_train, matrix)
            gram = features.T @ features
            gram.diagonal().add_(config.regularization)
            eigenvalues, vectors = torch.linalg.eigh(gram)
            kept = eigenvalues > eigenvalues[-1] * len(eigenvalues) * torch.finfo(problem.dtype).eps
            ranks.append(int(kept.sum()))
            root = vectors[:, kept] / eigenvalues[kept].sqrt()  # root @ root.T: the pseudo-inverse of Phi^T Phi
            if config.traker_rescaling:
                root = root / (root @ root.T).abs().mean().sqrt()
            self._members.append((theta, root, features @ root))
            del features, matrix
            out_to_loss += 1 - self._probabilities(theta, problem.x_train, problem.y_train)
        self._out_to_loss = out_to_loss / len(thetas)
        self.diagnostics = {
            "models": len(thetas),
            "seeds": seeds,
            "projected": self._projected,
            "projection_dim": config.projection_dim if self._projected else problem.n_params,
            "gram_ranks": ranks,
        }

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        indices = torch.as_tensor(test_indices, device=problem.x_test.device)
        x, y = problem.x_test[indices], problem.y_test[indices]
        scores = torch.zeros(len(indices), problem.n_train, dtype=torch.float64, device=problem.device)
        for model_id, (theta, root, whitened) in enumerate(self._members):
            scores += ((self._features(theta, x, y, self._matrix(model_id)) @ root) @ whitened.T).double()
        scores = scores / len(self._members) * self._out_to_loss.double()
        to_loss = 1 - self._probabilities(problem.theta, x, y)
        return (scores * to_loss.double().unsqueeze(1)).to(problem.dtype)

    def _matrix(self, model_id: int) -> Tensor | None:
        """Model ``model_id``'s projection matrix (``None`` where nothing is projected), drawn anew on every call: kept,
        it would hold ``P * k`` numbers per model between queries (1.1 GiB for three LeNets at ``k = 2048``)."""
        problem, config = self._require_problem(), self.config
        if not self._projected:
            return None
        matrix = projection_matrix(problem.n_params, config.projection_dim, config.seed, model_id, config.projection)
        return matrix.to(problem.theta)

    def _probabilities(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``p``, the probability of each example's label at ``theta``, in chunks of
        :meth:`benchmark.Problem.gradient_rows` examples."""
        problem = self._require_problem()
        rows = problem.gradient_rows()
        with torch.no_grad():
            parts = [
                self._margin.probability(problem, theta, x[start : start + rows], y[start : start + rows])
                for start in range(0, len(x), rows)
            ]
        return torch.cat(parts)

    def _features(self, theta: Tensor, x: Tensor, y: Tensor, matrix: Tensor | None) -> Tensor:
        """``[N, k]`` projected margin gradients at ``theta`` (``[N, P]`` unprojected where ``matrix`` is ``None``)."""
        problem = self._require_problem()
        width = problem.n_params if matrix is None else matrix.shape[1]
        out = torch.empty(len(x), width, dtype=problem.dtype, device=problem.device)
        rows = problem.gradient_rows()
        gradient = vmap(grad(self._margin.example(problem)), in_dims=(None, 0, 0))
        for start in range(0, len(x), rows):
            part = gradient(theta, x[start : start + rows], y[start : start + rows])
            out[start : start + rows] = part if matrix is None else part @ matrix
        return out


@dataclasses.dataclass(frozen=True)
class Margin:
    """TRAK's model output for a classification loss: the margin ``f = log(p / (1 - p))`` of the correct class and
    ``p`` itself, computed from the logits (not from the loss, which rounds to 0 in float32 where ``p`` rounds to 1).

    ``binary``: a single logit per example with 0/1 targets (``BCEWithLogitsLoss``), ``f = (2y - 1) logit``;
    otherwise ``[N, C]`` logits with class-index targets (``CrossEntropyLoss``),
    ``f = logit_y - logsumexp_{c != y} logit_c``."""

    binary: bool

    def margins(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.binary:
            return ((2 * y - 1) * logits).reshape(len(logits))
        correct = logits.gather(1, y.long().unsqueeze(1)).squeeze(1)
        others = logits.scatter(1, y.long().unsqueeze(1), float("-inf"))
        return correct - torch.logsumexp(others, dim=1)

    def example(self, problem: Problem) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The margin of one example ``(x, y)`` as a function of ``theta``, for ``torch.func.grad``."""

        def margin(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return self.margins(problem.model(problem.model_params(theta), x.unsqueeze(0)), y.unsqueeze(0))[0]

        return margin

    def probability(self, problem: Problem, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``p``, the probability of the correct class, per example: ``sigmoid(f)``."""
        return torch.sigmoid(self.margins(problem.model(problem.model_params(theta), x), y))


def margin_function(problem: Problem) -> Margin:
    """The :class:`Margin` of ``problem``'s loss, read from its :class:`~benchmark.Network`; an
    :class:`~benchmark.EstimatorFailed` where the loss is not a classification loss TRAK defines a margin for."""
    loss = None if problem.network is None else problem.network.loss
    if isinstance(loss, torch.nn.CrossEntropyLoss):
        return Margin(binary=False)
    if isinstance(loss, torch.nn.BCEWithLogitsLoss):
        return Margin(binary=True)
    name = "none stated" if loss is None else type(loss).__name__
    raise EstimatorFailed(
        f"trak attributes a classification margin and needs a CrossEntropyLoss or BCEWithLogitsLoss problem "
        f"(its loss: {name})"
    )


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [TRAK]
