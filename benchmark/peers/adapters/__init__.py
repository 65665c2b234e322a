"""Peer libraries as estimators of this harness: adapters that run dattri's, kronfluence's and captum's influence
estimators inside ``bench run``, on the same problem, test points and leave-one-out ground truth as the harness's own.

    bench run --task iris -p benchmark.peers.adapters --estimators exact,dattri-explicit,kronfluence-ekfac

| estimator | library | what |
|---|---|---|
| ``dattri-explicit`` | dattri 0.3.0 | ``IFAttributorExplicit``: dense Hessian, inverted |
| ``dattri-cg`` | dattri 0.3.0 | ``IFAttributorCG``: conjugate gradient, fixed iterations |
| ``dattri-lissa`` | dattri 0.3.0 | ``IFAttributorLiSSA`` |
| ``dattri-tracin`` | dattri 0.3.0 | ``TracInAttributor`` on the training run's checkpoints |
| ``dattri-trak`` | dattri 0.3.0 | ``TRAKAttributor`` on the optimum (or an ensemble) |
| ``kronfluence-kfac`` | kronfluence 1.0.1 | K-FAC influence |
| ``kronfluence-ekfac`` | kronfluence 1.0.1 | EK-FAC influence |
| ``captum-tracin`` | captum 0.9.0 | ``TracInCP`` on the training run's checkpoints |

Importing this package imports no peer library: each adapter imports its library in ``prepare``, and where it is
missing that estimator's record is a failure naming the package and the install command (``pip install -e
'.[peers]'``, into a virtual environment of its own: ``benchmark/peers/README.md``), while the run goes on. What
each library returns and how its scores are brought to the harness's sign and scale (the change of the test loss
when a training point is removed, ``+(1/n) g_test^T H^-1 g_i``): the docstrings of the modules
:mod:`~benchmark.peers.adapters.dattri_adapters`, :mod:`~benchmark.peers.adapters.kronfluence_adapters` and
:mod:`~benchmark.peers.adapters.captum_adapters` and of each class.
"""

from __future__ import annotations

from benchmark import Estimator, hookimpl
from benchmark.peers.adapters import captum_adapters, dattri_adapters, kronfluence_adapters

ESTIMATORS: list[type[Estimator]] = [
    *dattri_adapters.ESTIMATORS,
    *kronfluence_adapters.ESTIMATORS,
    *captum_adapters.ESTIMATORS,
]
"""Every adapter, in the order ``bench list`` shows them."""


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return list(ESTIMATORS)
