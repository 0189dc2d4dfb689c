"""Where a prepared corpus lives: one folder per set of data settings that shape the tokens, named so that a
change of settings or of the on-disk format (``FORMAT_VERSION``) never reuses an old folder. Below both the
config (which resolves a run's data folder) and ``pipelines.run.data`` (which writes and checks it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: version of the prepared-corpus layout (meta.json, tokenizer.json, train.bin, val.bin)
FORMAT_VERSION = 2


def data_dir_for(results_dir: str | Path, data: dict) -> Path:
    """Folder for a prepared corpus: a readable name plus a hash of the settings that shape the tokens."""
    key = {k: data.get(k) for k in ("corpus", "files", "hf_dataset", "text_field", "vocab_size", "val_fraction")}
    key["format_version"] = FORMAT_VERSION
    if data.get("corpus") == "python_stdlib":  # the source code of the interpreter's own version
        import sys

        key["python"] = "{}.{}.{}".format(*sys.version_info[:3])
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(results_dir) / "data" / f"{data['corpus']}-v{data['vocab_size']}-{h}"
