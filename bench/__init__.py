"""bench: wall-clock sweeps of real training steps and kernel micro-benchmarks.

`bench sweep` runs each config in its own worker process and writes results.csv/jsonl rows that
`timemodel` fits; `bench kernels` times our Triton kernels against baselines on a GPU.
Nothing imports this package (it sits on top of train/model/kernels).
"""
