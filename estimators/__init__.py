"""Built-in estimator plugins: ``exact``, ``cg``, ``lissa``, ``first-order``, ``arnoldi``, ``datainf``."""
