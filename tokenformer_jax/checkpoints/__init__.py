"""Checkpoints: the Orbax store (strict restore onto any mesh, array digests), the run record (what a
checkpoint records and what a later run may change), parameters read from a workdir or a released file,
and the reference's PyTorch format (import and export).
"""
