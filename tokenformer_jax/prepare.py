"""Prepare a corpus once, as an Apache Beam pipeline: tokenized ArrayRecord shards plus a manifest.

  python -m tokenformer_jax.prepare --input=GLOB[,GLOB...] --output=DIR --tokenizer=FILE \
      [--text_key=text] [--num_shards=N] [--validation_fraction=F] [-- BEAM_PIPELINE_OPTIONS]

Without Beam options the DirectRunner runs it in this process with a worker thread per core (a worker
encodes on one core); `-- --direct_num_workers=4` uses 4 workers, `--direct_running_mode=multi_processing`
makes them processes, and `-- --runner=DataflowRunner ...` (or Flink, Spark) runs the same pipeline on a
cluster. Training reads DIR with `--config.data.prepared=DIR`.
Rerunning a killed prepare reuses its completed shards; the manifest is written last.
"""
from absl import app, flags

from tokenformer_jax.data import build
from tokenformer_jax.errors import UserError, fail, parse_flags

_INPUT = flags.DEFINE_string('input', None, 'Comma-separated files or globs (local or gs://...), or kjv: '
                             '*.jsonl[.gz|.zst] (a JSON object per line), *.parquet, else plain text '
                             '(one document per file).')
_OUTPUT = flags.DEFINE_string('output', None, 'The dataset directory (must not hold another dataset).')
_TOKENIZER = flags.DEFINE_string('tokenizer', '', 'A sentencepiece .model or a Hugging Face tokenizer.json.')
_TRAIN_TOKENIZER = flags.DEFINE_integer(
    'train_tokenizer', 0, 'Instead of --tokenizer: train a sentencepiece BPE of this many pieces on '
    f'the first {build.TOKENIZER_SAMPLE_BYTES >> 20} MiB of text (an equal share of each file).')
_TEXT_KEY = flags.DEFINE_string('text_key', 'text', 'The text field (JSON Lines) or column (Parquet).')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 0, 'Shards per split (0: one per input file, at most '
                                   '256); input files are grouped by size, never split.')
_VALIDATION = flags.DEFINE_float('validation_fraction', 0.0,
                                 'Documents held out for validation (chosen by a hash of their name).')


def main(argv):
  beam_args = argv[1:]
  try:
    if not _INPUT.value or not _OUTPUT.value:
      raise UserError('give --input=FILES and --output=DIR')
    if bool(_TOKENIZER.value) == bool(_TRAIN_TOKENIZER.value):
      raise UserError('give one of --tokenizer=FILE and --train_tokenizer=VOCAB')
    opts = build.Options(inputs=_INPUT.value, output=_OUTPUT.value, tokenizer=_TOKENIZER.value,
                           train_vocab=_TRAIN_TOKENIZER.value, text_key=_TEXT_KEY.value,
                           num_shards=_NUM_SHARDS.value, validation_fraction=_VALIDATION.value)
    m = build.run(opts, beam_args=beam_args)
  except UserError as e:
    fail(str(e))
  for split, s in m['splits'].items():
    print(f'{split}: {s["tokens"]:,} tokens, {s["documents"]:,} documents, {len(s["shards"])} shards')
  print(f'tokenizer: {m["tokenizer"]["kind"]}, {m["tokenizer"]["vocab_size"]} ids, sha256 '
        f'{m["tokenizer"]["sha256"][:16]}…; written to {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
