"""Fixtures of the engine tests: the real experiment config, pointed at the small test corpus."""
from pathlib import Path

import pytest
import yaml

from pipelines.config import CONFIG_PATH
from tests.conftest import small_text


@pytest.fixture(scope="module")
def engine_configfile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    (root / "text.txt").write_text(small_text(), encoding="utf-8")
    cfg = yaml.safe_load(CONFIG_PATH.read_text())
    cfg["results_dir"] = str(root / "results")
    cfg["data"].update(corpus="files", files=[str(root / "text.txt")], vocab_size=512)
    cfg["train"].update(steps=4, eval_every=2, eval_batches=2, warmup_steps=2, timing_warmup_steps=1)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
