"""Speed against peer libraries (dattri, pyDVL) and the building blocks of a fast iHVP: measurements, not harness.

Two command-line measurements that write the committed tables ``leaderboards/speed.md`` and
``leaderboards/speed-blocks.md`` (see ``README.md`` in this folder). Nothing in the harness imports this package; it
takes the tasks and our estimators from the plugin registry, as ``bench run`` does.
"""
