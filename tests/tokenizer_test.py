"""Inference tokenizers: a Hugging Face tokenizer.json (GPT-NeoX style) beside our sentencepiece models."""
import pytest

from tokenformer_jax import tokenizer as tokenizer_lib
from tokenformer_jax.errors import UserError

from tests.conftest import write_hf_tokenizer

TEXT = ('In the beginning God created the heaven and the earth.\n'
        'And the earth was without form, and void; and darkness was upon the face of the deep.\n'
        'And the Spirit of God moved upon the face of the waters.\n')


def test_hugging_face_tokenizer_round_trips(tmp_path):
  tok = tokenizer_lib.load_file(write_hf_tokenizer(tmp_path / 'tokenizer.json'))
  assert isinstance(tok, tokenizer_lib.HuggingFaceTokenizer)
  assert tok.eos_id == 0 and tok.vocab_size == 300
  ids = tok.encode(TEXT)
  assert tok.eos_id not in ids and max(ids) < tok.vocab_size
  assert tok.decode(ids) == TEXT
  assert tok.decode(ids[:3] + [tok.eos_id]) == tok.decode(ids[:3])  # end-of-text is not text


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
  from tokenizers import Tokenizer, models
  path = tmp_path / 'tokenizer.json'
  Tokenizer(models.BPE()).save(str(path))
  with pytest.raises(UserError, match='no end-of-text token'):
    tokenizer_lib.load_file(str(path))


def test_bad_tokenizer_files(tmp_path):
  with pytest.raises(UserError, match='tokenizer file not found'):
    tokenizer_lib.load_file(str(tmp_path / 'missing.json'))
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(UserError, match='not a Hugging Face tokenizer.json'):
    tokenizer_lib.load_file(str(tmp_path / 'bad.json'))
  (tmp_path / 'bad.model').write_bytes(b'junk')
  with pytest.raises(UserError, match='not a sentencepiece model'):
    tokenizer_lib.load_file(str(tmp_path / 'bad.model'))
