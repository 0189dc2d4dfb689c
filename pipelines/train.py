"""``python -m pipelines.train``: one training run, the command the workflow and users run (the loop itself is
``pipelines/run/train.py``; ``--help`` lists its flags)."""

from pipelines.run.train import main

if __name__ == "__main__":
    raise SystemExit(main())
