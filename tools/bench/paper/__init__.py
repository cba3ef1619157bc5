"""Helpers of ``tools/bench/bench_paper.py``: the paper's section-5 comparison on real streams."""
