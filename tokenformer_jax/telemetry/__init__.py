"""Telemetry: what a run reports about itself. Metrics sinks (JSONL, TensorBoard, W&B), where a log
window's time went, goodput, profiler windows, the chips' datasheet peaks behind MFU, and the run's
final status for whoever started it.
"""
