"""The benchmarks: ``python -m bench {core,api,scale,tuning,all}``.

``bench.harness`` is what the four suites share (statistics, recording, the machine,
interleaving, baselines, report blocks, plots); ``bench.suites`` holds what each one
measures and how it reports it.
"""
