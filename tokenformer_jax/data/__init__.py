"""Data: preparing corpora into tokenized ArrayRecord shards, and reading them through grain.

- sources: input documents (KJV, text, JSON Lines, Parquet; local or remote) and their fingerprint
- tokenizer: sentencepiece or Hugging Face tokenizer.json behind one interface; BPE training
- shards, manifest: the on-disk format; build, beam_pipeline: writing it (in-process or on Beam)
- pipeline: windows, shuffling, mixtures, the global-position batch iterator; dataset: a run's data
"""
