"""Inference: a checkpoint restored for use, text generation with a KV cache, evaluation (loss,
perplexity, bits per byte), and the lm-evaluation-harness adapter.
"""
