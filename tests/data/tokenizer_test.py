"""Both tokenizer formats behind one interface, identity by sha256, and sentencepiece BPE training."""
import numpy as np
import pytest

from tests.helpers import write_hf_tokenizer
from tokenformer_jax.data import sources
from tokenformer_jax.data import tokenizer as tokenizer_lib
from tokenformer_jax.errors import UserError

TEXT = ('In the beginning God created the heaven and the earth.\n'
        'And the earth was without form, and void; and darkness was upon the face of the deep.\n'
        'And the Spirit of God moved upon the face of the waters.\n')


@pytest.fixture(scope='module')
def kjv_bpe():
  return tokenizer_lib.train_sentencepiece(sources.documents(sources.KJV), 512)


def test_hugging_face_tokenizer_round_trips(tmp_path):
  tok = tokenizer_lib.load_file(write_hf_tokenizer(tmp_path / 'tokenizer.json'))
  assert tok.kind == tokenizer_lib.HUGGING_FACE and tok.file_name == 'tokenizer.json'
  assert tok.eos_id == 0 and tok.vocab_size == 300
  ids = tok.encode(TEXT)
  assert tok.eos_id not in ids and max(ids) < tok.vocab_size
  assert tok.decode(ids) == TEXT
  assert tok.decode(ids[:3] + [tok.eos_id]) == tok.decode(ids[:3])  # end-of-text is not text
  docs = tok.encode_documents([TEXT, 'God'])
  assert [d.tolist() for d in docs] == [ids + [0], tok.encode('God') + [0]]


def test_sentencepiece_training_is_deterministic_and_round_trips(kjv_bpe):
  again = tokenizer_lib.train_sentencepiece(sources.documents(sources.KJV), 512)
  assert again.sha256 == kjv_bpe.sha256 and again.file_bytes == kjv_bpe.file_bytes
  assert kjv_bpe.kind == tokenizer_lib.SENTENCEPIECE and kjv_bpe.vocab_size == 512
  assert kjv_bpe.eos_id == 1
  assert kjv_bpe.decode(kjv_bpe.encode(TEXT)) == TEXT
  docs = kjv_bpe.encode_documents([TEXT, 'x'])
  assert docs[0][-1] == docs[1][-1] == kjv_bpe.eos_id
  assert kjv_bpe.decode(docs[0][:-1]) == TEXT and docs[0].dtype == np.int64


def test_tokenizers_told_apart_by_content(tmp_path, kjv_bpe):
  (tmp_path / 'model').write_bytes(kjv_bpe.file_bytes)
  assert tokenizer_lib.load_file(str(tmp_path / 'model')).sha256 == kjv_bpe.sha256
  hf = open(write_hf_tokenizer(tmp_path / 'tokenizer.json'), 'rb').read()
  (tmp_path / 'hf.bin').write_bytes(hf)
  assert tokenizer_lib.load_file(str(tmp_path / 'hf.bin')).kind == tokenizer_lib.HUGGING_FACE


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
  from tokenizers import Tokenizer, models
  path = tmp_path / 'tokenizer.json'
  Tokenizer(models.BPE()).save(str(path))
  with pytest.raises(UserError, match='no end-of-text token'):
    tokenizer_lib.load_file(str(path))


def test_file_sha256_is_the_loaded_tokenizers(tmp_path, kjv_bpe):
  """A prepare's request names its tokenizer by this hash, read without building the tokenizer."""
  path = tmp_path / 'kjv.model'
  path.write_bytes(kjv_bpe.file_bytes)
  assert tokenizer_lib.file_sha256(str(path)) == tokenizer_lib.load_file(str(path)).sha256 == kjv_bpe.sha256
  path.write_bytes(kjv_bpe.file_bytes + b'x')
  assert tokenizer_lib.file_sha256(str(path)) != kjv_bpe.sha256


def test_bad_tokenizer_files(tmp_path):
  for read in (tokenizer_lib.load_file, tokenizer_lib.file_sha256):
    with pytest.raises(UserError, match='tokenizer file not found'):
      read(str(tmp_path / 'missing.json'))
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(UserError, match='not a Hugging Face tokenizer.json'):
    tokenizer_lib.load_file(str(tmp_path / 'bad.json'))
  (tmp_path / 'text.json').write_text('plain words')
  with pytest.raises(UserError, match='not a Hugging Face tokenizer.json'):
    tokenizer_lib.load_file(str(tmp_path / 'text.json'))
  for content in (b'', b'junk'):
    (tmp_path / 'bad.model').write_bytes(content)
    with pytest.raises(UserError, match='not a sentencepiece model'):
      tokenizer_lib.load_file(str(tmp_path / 'bad.model'))


def test_byte_fallback_only_for_large_vocab():
  sentences = ['In the beginning God created the heaven and the earth.'] * 3
  assert not tokenizer_lib.trainer_settings(sentences, 400)['byte_fallback']
  assert tokenizer_lib.trainer_settings(sentences, 1024)['byte_fallback']
  with pytest.raises(UserError, match='has 94 distinct characters, so at least 97'):
    tokenizer_lib.trainer_settings([''.join(chr(c) for c in range(33, 127))], 96)
  with pytest.raises(UserError, match='at least 64'):
    tokenizer_lib.trainer_settings(sentences, 32)


@pytest.mark.parametrize('normalizer, skipped', [('NFC', True), ('NFKC+NFD', True), ('Lowercase', False),
                                                 (None, False)])
def test_documents_encode_as_encode_does_on_one_core_or_all(tmp_path, normalizer, skipped):
  """ASCII documents skip a Unicode normalizer (the identity on ASCII), others go through it; on one
  core or all, documents get exactly `encode`'s ids."""
  from tokenizers import Tokenizer, normalizers
  hf = Tokenizer.from_file(write_hf_tokenizer(tmp_path / 'base.json'))
  hf.normalizer = {'NFC': normalizers.NFC(), 'Lowercase': normalizers.Lowercase(), None: None,
                   'NFKC+NFD': normalizers.Sequence([normalizers.NFKC(), normalizers.NFD()])}[normalizer]
  hf.save(str(tmp_path / 'tokenizer.json'))
  tok = tokenizer_lib.load_file(str(tmp_path / 'tokenizer.json'))
  assert (tok._hf_ascii is not tok._hf) == skipped  # pylint: disable=protected-access
  if skipped:
    assert tok._hf_ascii.normalizer is None  # pylint: disable=protected-access
  docs = [TEXT, 'God', 'cafe\u0301 \ufb01', 'And GOD said', 'x  y\n\n  z']  # decomposed é, a ligature
  expected = [tok.encode(d) + [tok.eos_id] for d in docs]
  for parallel in (True, False):
    assert [d.tolist() for d in tok.encode_documents(docs, parallel)] == expected
  if normalizer == 'NFC':  # without its normalizer a decomposed é encodes otherwise: the routing matters
    ascii_tok = tok._hf_ascii  # pylint: disable=protected-access
    unnormalized = ascii_tok.encode('cafe\u0301', add_special_tokens=False).ids
    assert tok.encode('cafe\u0301') == tok.encode('caf\u00e9') != unnormalized


def test_sentencepiece_documents_on_one_core_or_all(kjv_bpe):
  docs = [TEXT, 'x', 'In the\n\nbeginning']
  assert [d.tolist() for d in kjv_bpe.encode_documents(docs, parallel=False)] == [
      d.tolist() for d in kjv_bpe.encode_documents(docs, parallel=True)]
