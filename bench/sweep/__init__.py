"""The sweep parent: grid, settings, plan and executors, results rows, status, show and plot.

It never imports torch for a measurement: each config runs in a worker process
(`python -m bench.worker.run`), and this room reads and writes the sweep folder around it.
"""
