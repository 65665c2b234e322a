"""What every stage shares, knowing none of them: it imports nothing else of the harness.

- :mod:`~benchmark.common.errors`: the error hierarchy (a user's mistake is one line, never a traceback);
- :mod:`~benchmark.common.config`: YAML configs, ``--set NAME.FIELD=VALUE`` and typed option dataclasses;
- :mod:`~benchmark.common.cache`: the on-disk cache of optima and ground truth, keyed by what determines them;
- :mod:`~benchmark.common.provenance`: where a number comes from (commit, environment, a digest of our code);
- :mod:`~benchmark.common.markdown`: the one Markdown table helper of the hand-written pages.
"""
