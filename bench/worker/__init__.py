"""The sweep worker: one config in its own process, timed in windows, with GPU telemetry.

It builds the run with the trainer's own builder, so a benchmarked step is the step that trains.
"""
