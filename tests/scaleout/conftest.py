"""Fixtures of the scale-out tests: the engine tests' experiment config (small corpus, vocab 512) and their
one-thread rule for this process, reused rather than rebuilt."""

from tests.engines.conftest import engine_configfile, one_thread  # noqa: F401 - fixtures, used by name
