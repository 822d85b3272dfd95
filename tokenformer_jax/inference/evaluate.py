"""Evaluation of a checkpoint: loss, perplexity and bits per byte, on the validation split or a text file.

- Validation split: the windows training evaluates (data.eval_batches: train.eval_batches batches of
  train.batch_size × (seq_len + 1) tokens from the start of the split), so the loss equals the val loss
  training logged for the same checkpoint; raise --config.train.eval_batches to cover more of the split.
- Text file: the whole file, encoded after one end-of-text token (so its first token is predicted from a
  document start, like every other), cut into non-overlapping windows of seq_len predicted tokens; each
  window starts with a fresh context (no sliding window), and the last one is masked where it runs out.

Loss is mean nats per predicted token, perplexity exp(loss), and bits per byte = total nats / ln 2 / the
UTF-8 bytes of the evaluated text (the file, or the decoded targets of the validation windows), which
compares models with different tokenizers.
"""
import dataclasses
import math
import sys

import jax
import numpy as np

from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.data import dataset as dataset_lib, pipeline
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import loading
from tokenformer_jax.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class EvalResult:
  loss: float                # mean nats per predicted token
  perplexity: float
  bits_per_byte: float
  tokens: int                # predicted tokens
  bytes: int                 # UTF-8 bytes of the evaluated text

  def line(self) -> str:
    return (f'loss {self.loss:.4f}, perplexity {self.perplexity:.3f}, bits per byte '
            f'{self.bits_per_byte:.4f} ({self.tokens:,} tokens, {self.bytes:,} bytes)')


def windows(tokens_N: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows [R, seq_len + 1] predicting tokens_N[1:] once each, and the mask
  [R, seq_len] of real targets (the last window is zero-padded)."""
  num_targets = tokens_N.shape[0] - 1
  if num_targets < 1:
    raise UserError('nothing to evaluate: the text encodes to no tokens')
  rows = -(-num_targets // seq_len)
  padded_N = np.zeros(rows * seq_len + 1, np.int32)
  padded_N[:tokens_N.shape[0]] = tokens_N
  windows_RxW = np.lib.stride_tricks.sliding_window_view(padded_N, seq_len + 1)[::seq_len]
  mask_RxT = (np.arange(rows * seq_len) < num_targets).reshape(rows, seq_len)
  return np.ascontiguousarray(windows_RxW), mask_RxT.astype(np.float32)


def total_nats(spec, cfg, params, windows_RxW: np.ndarray, mask_RxT: np.ndarray) -> float:
  """Summed cross entropy of the masked targets, in batches of train.batch_size rows (padded), each
  process evaluating its share of every batch, by training's eval step (step.make_eval_step)."""
  batch = cfg.train.batch_size
  rows = -(-windows_RxW.shape[0] // batch) * batch
  windows_RxW = np.pad(windows_RxW, ((0, rows - windows_RxW.shape[0]), (0, 0)))
  mask_RxT = np.pad(mask_RxT, ((0, rows - mask_RxT.shape[0]), (0, 0)))
  local = batch // jax.process_count()
  mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  batches = ((windows_RxW[start:start + batch][mine], mask_RxT[start:start + batch][mine])
             for start in range(0, rows, batch))
  return step_lib.summed_loss(step_lib.make_eval_step(spec, cfg), spec, cfg, params, batches)


def _result(nats: float, tokens: int, num_bytes: int) -> EvalResult:
  loss = nats / tokens
  return EvalResult(loss, math.exp(min(loss, 700.0)), nats / math.log(2) / max(num_bytes, 1), tokens,
                    num_bytes)


def evaluate_text(spec, cfg, params, tokenizer, text: str) -> EvalResult:
  """The whole `text`, predicted after an end-of-text token."""
  tokens_N = np.array([tokenizer.eos_id] + tokenizer.encode(text), np.int32)
  windows_RxW, mask_RxT = windows(tokens_N, cfg.data.seq_len)
  nats = total_nats(spec, cfg, params, windows_RxW, mask_RxT)
  return _result(nats, int(mask_RxT.sum()), len(text.encode('utf-8')))


def evaluate_split(spec, cfg, params, tokenizer, validation: pipeline.Windows) -> EvalResult:
  """The validation windows training evaluates."""
  rows_RxW = np.concatenate(pipeline.eval_batches(validation, cfg.train.batch_size,
                                                  cfg.train.eval_batches))
  mask_RxT = np.ones((rows_RxW.shape[0], cfg.data.seq_len), np.float32)
  nats = total_nats(spec, cfg, params, rows_RxW, mask_RxT)
  text = tokenizer.decode(rows_RxW[:, 1:].reshape(-1).tolist())
  return _result(nats, int(mask_RxT.sum()), len(text.encode('utf-8')))


def read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise UserError(f'--eval_file is not UTF-8 text: {path}') from e
  except OSError as e:
    raise UserError(f'cannot read --eval_file {path}: {e.strerror}') from e


def run(cfg, workdir: str, eval_file: str | None = None, step: int | None = None,
        out=sys.stdout) -> EvalResult:
  """Evaluates the workdir's latest (or given) checkpoint on `eval_file`, or the validation split."""
  text = read_text(eval_file) if eval_file else None
  restored = loading.load(cfg, workdir, step)
  if text is not None:
    tokenizer = dataset_lib.tokenizer_for_inference(loading.data_config(cfg, workdir, restored), workdir)
    run_record.inference_tokenizer(restored.meta, tokenizer, restored.vocab_size, restored.step)
    result = evaluate_text(restored.spec, cfg, restored.params, tokenizer, text)
  else:
    run_data = dataset_lib.open_run_data(loading.data_config(cfg, workdir, restored), workdir,
                                         create=False)
    run_record.inference_tokenizer(restored.meta, run_data.tokenizer, restored.vocab_size, restored.step)
    validation = run_data.validation(cfg.data.seq_len)
    if validation is None:
      raise UserError(f'nothing to evaluate: {run_data.no_validation_reason()}; give --eval_file=FILE or '
                      f'data.validation=DIR')
    result = evaluate_split(restored.spec, cfg, restored.params, run_data.tokenizer, validation)
  if jax.process_index() == 0:
    what = eval_file or cfg.data.validation or 'the validation split'
    print(f'eval of step {restored.step} on {what}: {result.line()}', file=out, flush=True)
  return result
