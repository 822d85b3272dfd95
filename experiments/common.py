"""Settings shared by experiment files, which load this file by path:
`common = config.experiment_beside(__file__, 'common.py')`."""


def pile_training(c, batch_size: int, steps: int):
  """The paper's Pile training setup on config c: GPT-NeoX-20B vocab (50,277 ids, padded to 50,304),
  sequence 2048, AdamW 6e-4 → 6e-5 (β 0.9/0.95, eps 1e-8, weight decay 0.1), 1% warmup then cosine,
  clip 1.0; bf16 compute with f32 parameters, block remat, an FSDP mesh over all devices."""
  c.model.vocab_size = 50304
  c.model.dtype = 'bfloat16'
  c.model.remat = 'block'
  c.data.vocab_size = 50277
  c.data.seq_len = 2048
  c.train.batch_size = batch_size
  c.train.steps = steps
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 50
  c.train.sample_tokens = 0
  c.optimizer.lr = 6e-4
  c.optimizer.min_lr = 6e-5
  c.optimizer.warmup_frac = 0.01
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
