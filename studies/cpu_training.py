"""The training setup shared by the CPU-scale studies' experiment files, which load this file by path:
`cpu_training = config.experiment_beside(__file__, '../cpu_training.py')`."""


def cpu_study_training(c, quick: bool, steps: int):
  """The CPU-scale studies' training setup on config c (the bundled corpus): vocab 2048, 16 × 128 tokens,
  AdamW 3e-3 → 3e-4 with 5% warmup, an evaluation on 8 batches every 100 steps; `quick` shrinks it to the
  pipeline check's 8 × 64 tokens of a 512-piece vocab, evaluated every 10 steps on 2 batches."""
  c.data.vocab_size = 512 if quick else 2048
  c.data.seq_len = 64 if quick else 128
  c.train.batch_size = 8 if quick else 16
  c.train.steps = steps
  c.train.eval_every = 10 if quick else 100
  c.train.eval_batches = 2 if quick else 8
  c.train.checkpoint_every = 100
  c.train.log_every = 10
  c.train.sample_tokens = 0
  c.optimizer.lr = 3e-3
  c.optimizer.min_lr = 3e-4
  c.optimizer.warmup_frac = 0.05
  return c
