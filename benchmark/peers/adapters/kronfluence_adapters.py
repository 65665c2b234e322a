"""kronfluence 1.0.1's K-FAC and EK-FAC influence (Grosse et al. 2023) as estimators of this harness:
``kronfluence-kfac`` and ``kronfluence-ekfac``.

How the problem reaches kronfluence: the problem's ``nn.Module`` at the optimum (:meth:`benchmark.Problem.network_at`)
through ``prepare_model``, a kronfluence ``Task`` whose training loss and measurement are the problem's per-example loss
summed over the batch (kronfluence's convention; its factors average over the examples themselves), and an
``Analyzer`` writing its factors and scores into a temporary directory kept while the estimator lives. kronfluence
factors the ``Linear`` and ``Conv2d`` modules it finds; parameters of other modules get no influence from it.

Conventions, and what the adapters make of them: ``compute_pairwise_scores`` gives ``Tensor[m, n]`` of ``g_test^T
(K + d I)^-1 g_i`` with per-example gradients of the loss (no weight decay) and ``K`` kronfluence's factored
Fisher; the harness's ``[m, n]`` is it over ``n``, with the same sign (positive where removing the training point
raises the test loss). ``d``, kronfluence's ``damping_factor``, is added exactly to the eigenvalues in the factors'
eigenbasis; ``d = damping + weight_decay`` targets the harness's ``(H + damping I)^-1``, as the harness's ``kfac``
does. kronfluence's default ``damping_factor`` is 1e-8; the adapters take the task's protocol damping instead.
Factors and scores are computed in the problem's dtype (kronfluence's default is float32 throughout; its
eigendecompositions stay in float64). No iHVP: kronfluence keeps its preconditioned gradients inside.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from benchmark import Estimator, EstimatorFailed, Problem, non_negative, positive
from benchmark.peers.adapters import common

FISHERS = ("sampled", "empirical")
"""Whose labels' gradients the factors are built from: labels sampled from the model's predictive distribution (the
true Fisher, kronfluence's default, ``use_empirical_fisher=False``), or the observed labels (the empirical Fisher)."""


@dataclasses.dataclass
class KronfluenceConfig:
    """Hyperparameters of :class:`KronfluenceKFAC` and :class:`KronfluenceEKFAC`.

    Attributes:
        damping: ``lambda`` in ``(K + lambda I)^-1``; kronfluence's ``damping_factor`` is ``lambda`` plus the problem's
            weight decay.
        fisher: one of :data:`FISHERS` (kronfluence's default ``sampled``).
        batch_size: training examples per batch of the factor and score passes.
        seed: seed of the sampled labels (``fisher: sampled``).
    """

    damping: float = 0.001
    fisher: str = dataclasses.field(default="sampled", metadata={"choices": FISHERS})
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(batch_size=self.batch_size)


@contextmanager
def deprecations_hushed() -> Iterator[None]:
    """kronfluence 1.0.1 builds ``torch.cuda.amp.GradScaler``, which torch 2.14 warns is deprecated on every pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*GradScaler.* is deprecated", category=FutureWarning)
        yield


def sampler(loss: nn.Module, generator: torch.Generator) -> Any:
    """Labels drawn from the predictive distribution that ``loss`` (the problem's torch loss) is the negative
    log-likelihood of, given the model's outputs; ``None`` for a loss without one here."""
    if isinstance(loss, nn.CrossEntropyLoss):
        return lambda outputs: torch.multinomial(torch.softmax(outputs, dim=-1), 1, generator=generator).squeeze(-1)
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return lambda outputs: torch.bernoulli(torch.sigmoid(outputs), generator=generator)
    return None


def kronfluence_task(base: type, problem: Problem, draw: Any) -> Any:
    """A ``kronfluence.task.Task`` (``base``) of the problem: summed per-example loss, on labels from ``draw`` (see
    :func:`sampler`) where kronfluence asks for sampled ones."""

    class SummedLoss(base):  # type: ignore[misc, valid-type]
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            x, y = common.as_batch(problem, *batch)
            outputs = model(x)
            if sample:
                with torch.no_grad():
                    y = draw(outputs.detach()).to(y.dtype)
            return problem.loss(outputs, y).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            x, y = common.as_batch(problem, *batch)
            return problem.loss(model(x), y).sum()

    return SummedLoss()


class KronfluenceKFAC(Estimator):
    """kronfluence's K-FAC influence (``strategy="kfac"``).

    Per ``Linear``/``Conv2d`` module the Kronecker factors ``A`` (inputs) and ``G`` (output gradients), averaged over
    the examples (on a convolution over its output positions too, so its block is smaller than the harness's
    K-FAC-expand ``kfac`` by the number of positions: ``leaderboards/agreement.md``), inverted in their eigenbasis with
    ``damping_factor`` added to ``Lambda_G (x) Lambda_A``. Scores and conversion: module docstring."""

    name = "kronfluence-kfac"
    Config = KronfluenceConfig
    damping_field = "damping"
    no_ihvp = "kronfluence returns pairwise scores; its preconditioned gradients stay inside it"
    strategy: ClassVar[str] = "kfac"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        analyzer, arguments, task_module = common.require(
            self.name, "kronfluence", "kronfluence.analyzer", "kronfluence.arguments", "kronfluence.task"
        )
        c = self.config
        net = common.network(self.name, problem)
        generator = torch.Generator(device=problem.device).manual_seed(c.seed)
        draw = sampler(net.loss, generator)
        if c.fisher == "sampled" and draw is None:
            raise EstimatorFailed(
                f"{self.name}: fisher 'sampled' draws labels for a CrossEntropyLoss or BCEWithLogitsLoss, not for "
                f"{type(net.loss).__name__}; set {self.name}.fisher=empirical"
            )
        task = kronfluence_task(task_module.Task, problem, draw)
        model = analyzer.prepare_model(net.module, task)
        self._arguments: ModuleType = arguments
        self._workdir = tempfile.TemporaryDirectory(prefix="bench-kronfluence-")
        root = logging.getLogger()
        level = root.level  # kronfluence sets the root logger's level to its own log_level, silencing bench's log
        self._analyzer = analyzer.Analyzer(
            self.name,
            model,
            task,
            cpu=problem.device.type == "cpu",
            log_level=logging.WARNING,
            disable_tqdm=not self.progress,
            output_dir=self._workdir.name,
            disable_model_save=True,
        )
        root.setLevel(level)
        self._train = TensorDataset(problem.x_train, problem.y_train)
        dtype = problem.dtype
        factor_args = arguments.FactorArguments(
            strategy=self.strategy,
            use_empirical_fisher=c.fisher == "empirical",
            activation_covariance_dtype=dtype,
            gradient_covariance_dtype=dtype,
            per_sample_gradient_dtype=dtype,
            lambda_dtype=dtype,
        )
        with common.seeded(c.seed), deprecations_hushed():
            self._analyzer.fit_all_factors(
                "factors",
                self._train,
                per_device_batch_size=min(c.batch_size, problem.n_train),
                factor_args=factor_args,
                overwrite_output_dir=True,
            )
        self.diagnostics = {"peer": f"{common.version('kronfluence')} {self.strategy}"}

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        c = self.config
        x, y = common.test_data(problem, test_indices)
        dtype = problem.dtype
        score_args = self._arguments.ScoreArguments(
            damping_factor=c.damping + problem.weight_decay,
            per_sample_gradient_dtype=dtype,
            precondition_dtype=dtype,
            score_dtype=dtype,
        )
        with deprecations_hushed():
            self._analyzer.compute_pairwise_scores(
                "scores",
                "factors",
                TensorDataset(x, y),
                self._train,
                per_device_query_batch_size=len(x),
                per_device_train_batch_size=min(c.batch_size, problem.n_train),
                score_args=score_args,
                overwrite_output_dir=True,
            )
        scores = self._analyzer.load_pairwise_scores("scores")["all_modules"]
        return common.to_harness(scores, problem, transpose=False)


class KronfluenceEKFAC(KronfluenceKFAC):
    """kronfluence's EK-FAC influence (``strategy="ekfac"``).

    K-FAC's eigenbasis with the eigenvalues replaced by the per-example gradients' second
    moments there (one more pass over the data), ``damping_factor`` added to them. Scores and conversion: module
    docstring."""

    name = "kronfluence-ekfac"
    strategy = "ekfac"


ESTIMATORS: list[type[Estimator]] = [KronfluenceKFAC, KronfluenceEKFAC]
