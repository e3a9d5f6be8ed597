"""Code the benchmark scripts in ``benchmarks/`` share, so each script imports the package, not another script.

``learning_runs``: training runs of the run CLI's loop and their held-out success curves;
``gap_targets``: targets at a fraction of the student-to-teacher gap and how they print;
``curve_plot``: drawing those curves; ``trl_config``: the TRL trainer settings of the comparisons with TRL.
"""
