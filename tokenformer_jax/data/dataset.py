"""The data of a run: the prepared datasets it reads (`data.prepared`, `data.mixture`, or raw text
prepared in-process into the cache directory), their one tokenizer, and their windows.

A workdir's data is never rebuilt silently: when the raw corpus, the tokenizer or the options differ
from what the cache directory was prepared from, the run stops and says what changed.
"""
import dataclasses
import os
import shutil

import jax
from absl import logging
from jax.experimental import multihost_utils

from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.data import manifest as manifest_lib
from tokenformer_jax.data import pipeline, build, sources
from tokenformer_jax.data import tokenizer as tokenizer_lib
from tokenformer_jax.errors import UserError


@dataclasses.dataclass
class RunData:
  dirs: list
  weights: list
  manifests: list
  tokenizer: tokenizer_lib.Tokenizer
  validation_dir: str = ''          # data.validation: a prepared dataset evaluated as a whole
  validation_manifest: dict | None = None

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  def train_stream(self, seq_len: int, seed: int, global_batch: int):
    windows = [pipeline.Windows(d, m, 'train', seq_len) for d, m in zip(self.dirs, self.manifests)]
    for w in windows:
      pipeline.check_size(w, global_batch, 'training split')
    return pipeline.shuffled_stream(windows, self.weights, seed)

  def validation(self, seq_len: int) -> pipeline.Windows | None:
    """The windows evaluated: all of data.validation's dataset when set, else the first dataset's
    validation split; None when that dataset was prepared without one (validation fraction 0)."""
    if self.validation_dir:
      return pipeline.Windows(self.validation_dir, self.validation_manifest, manifest_lib.SPLITS, seq_len)
    m = self.manifests[0]
    if not m['splits']['validation'].get('shards') and not m.get('request', {}).get('validation_fraction'):
      return None
    return pipeline.Windows(self.dirs[0], m, 'validation', seq_len)

  def no_validation_reason(self) -> str:
    """Why `validation` is None."""
    return f'{self.dirs[0]} was prepared without a validation split (--val_fraction=0)'


def cache_dir_for(data_cfg, workdir: str) -> str:
  """Where a run's raw corpus is prepared: data.cache_dir, else WORKDIR/data."""
  return data_cfg.cache_dir or os.path.join(workdir, 'data')


def _raw_options(data_cfg, output: str) -> build.Options:
  return build.Options(inputs=data_cfg.corpus, output=output, tokenizer=data_cfg.tokenizer,
                         train_vocab=0 if data_cfg.tokenizer else int(data_cfg.vocab_size),
                         text_key=data_cfg.text_key, validation_fraction=float(data_cfg.val_fraction))


def _parse_mixture(spec: str) -> list:
  pairs = []
  for item in spec.split(','):
    path, sep, weight = item.strip().rpartition(':')
    try:
      w = float(weight)
    except ValueError:
      w = -1.0
    if not sep or not path or not w > 0:
      raise UserError(f'data.mixture wants DIR:WEIGHT,DIR:WEIGHT with positive weights, got {item!r}')
    pairs.append((path, w))
  return pairs


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _prepare_raw(data_cfg, cache_dir: str, create: bool, record: dict | None) -> None:
  """Prepares the raw corpus into cache_dir (process 0; the others wait), or checks it is unchanged.
  A fresh preparation whose tokenizer is not the one `record` (a checkpoint's) names is removed again
  before the error, so the failed run leaves the workdir as it was."""
  opts = _raw_options(data_cfg, cache_dir)
  existing = manifest_lib.read_json(manifest_lib.path(cache_dir))
  if existing is None:
    existed = os.path.exists(cache_dir)
    if not create:
      raise UserError(f'no prepared data in {cache_dir}: name a dataset (data.prepared) or a tokenizer '
                      f'(data.tokenizer); without a dataset, evaluate a text file instead (--eval_file)')
    if jax.process_index() == 0:
      build.run(opts, log=logging.info)  # e.g. the shards reused from a stopped run's prepare
    _sync('data prepared')
    got = manifest_lib.read(cache_dir)['tokenizer']['sha256']
    try:
      run_record.check_tokenizer(record, got, where=cache_dir)
    except UserError:
      _sync('data checked')
      if jax.process_index() == 0 and not existed:
        shutil.rmtree(cache_dir)
      raise
    return
  now = build.request(opts, sources.expand(opts.inputs))
  before = existing.get('request', {})
  changed = [run_record.PREPARED_FROM.get(k, k) for k in sorted(now) if before.get(k) != now[k]]
  if changed:
    raise UserError(f'{cache_dir} was prepared from other data: {", ".join(changed)} changed, and its '
                    f'checkpoints were trained on those token ids; it is never rebuilt silently. Restore '
                    f'the corpus, or train in a new workdir (or a new data.cache_dir)')


def open_run_data(data_cfg, workdir: str, create: bool = True,
                  record: dict | None = None) -> RunData:
  """The run's datasets; raw text is prepared first when `create` (training), else must exist. With
  `record` (a checkpoint's run record), datasets of another tokenizer than it names are refused
  (run_record.check_tokenizer)."""
  if data_cfg.mixture and data_cfg.prepared:
    raise UserError('set data.prepared or data.mixture, not both')
  if data_cfg.mixture:
    pairs = _parse_mixture(data_cfg.mixture)
  elif data_cfg.prepared:
    pairs = [(data_cfg.prepared, 1.0)]
  else:
    if not data_cfg.corpus.strip():
      raise UserError('data.corpus is empty')
    if not 0.0 < float(data_cfg.val_fraction) <= 0.5:
      raise UserError(f'data.val_fraction must be in (0, 0.5], got {data_cfg.val_fraction}')
    cache_dir = cache_dir_for(data_cfg, workdir)
    _prepare_raw(data_cfg, cache_dir, create, record)
    pairs = [(cache_dir, 1.0)]
  manifests = [manifest_lib.read(d) for d, _ in pairs]
  shas = {m['tokenizer']['sha256'] for m in manifests}
  if len(shas) > 1:
    raise UserError(f'the datasets of data.mixture use different tokenizers (sha256 {", ".join(sorted(shas))})')
  first_dir, first = pairs[0][0], manifests[0]
  tokenizer = tokenizer_lib.load_file(os.path.join(first_dir, first['tokenizer']['file']))
  if tokenizer.sha256 != first['tokenizer']['sha256']:
    raise UserError(f'{first_dir}/{first["tokenizer"]["file"]} is not the tokenizer the dataset was '
                    f'prepared with (sha256 {tokenizer.sha256[:12]}…, manifest {first["tokenizer"]["sha256"][:12]}…)')
  if (data_cfg.prepared or data_cfg.mixture) and data_cfg.tokenizer:
    given = tokenizer_lib.load_file(data_cfg.tokenizer)
    if given.sha256 != tokenizer.sha256:
      raise UserError(f'data.tokenizer {data_cfg.tokenizer} (sha256 {given.sha256[:12]}…) is not the '
                      f'prepared dataset\'s tokenizer (sha256 {tokenizer.sha256[:12]}…)')
  run_record.check_tokenizer(record, tokenizer.sha256, where=first_dir)
  run = RunData([d for d, _ in pairs], [w for _, w in pairs], manifests, tokenizer)
  if data_cfg.validation:
    run.validation_dir, run.validation_manifest = data_cfg.validation, _validation_manifest(
        data_cfg.validation, run)
  return run


def _validation_manifest(validation_dir: str, run: RunData) -> dict:
  """data.validation's manifest: a dataset of the run's tokenizer that the run does not train on."""
  if os.path.abspath(validation_dir) in [os.path.abspath(d) for d in run.dirs]:
    raise UserError(f'data.validation={validation_dir} is a dataset this run trains on; name a '
                    f'dataset of held-out text')
  m = manifest_lib.read(validation_dir)
  if m['tokenizer']['sha256'] != run.tokenizer.sha256:
    raise UserError(f'data.validation={validation_dir} was prepared with tokenizer sha256 '
                    f'{m["tokenizer"]["sha256"]}, the training data with {run.tokenizer.sha256}: its ids '
                    f'mean other pieces; prepare it with the training data\'s tokenizer')
  return m


def tokenizer_for_inference(data_cfg, workdir: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer generate/eval use: data.tokenizer when no dataset is named, else the dataset's."""
  if data_cfg.tokenizer and not (data_cfg.prepared or data_cfg.mixture):
    return tokenizer_lib.load_file(data_cfg.tokenizer)
  return open_run_data(data_cfg, workdir, create=False).tokenizer
