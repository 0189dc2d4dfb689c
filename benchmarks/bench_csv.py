"""What every benchmark CSV row carries besides its numbers, and how it is written.

A benchmark table is read alone (REPORT.md, the HTML report, a spreadsheet), so each row says what it was
measured on: the CPU model, the torch threads of the timed process, and how many of the machine's cores the
workflow reserved for the job (``job_cores`` of ``cpu_count``; 0 when run by hand). When the job reserved
every core no other workflow job ran beside it; processes outside the workflow are not controlled.
"""

from __future__ import annotations

import csv
import io
import os

import torch


def run_env(job_cores: int) -> dict:
    from common.environment import cpu_info

    try:
        import torchao

        ao = torchao.__version__
    except ImportError:
        ao = None
    return {
        "cpu_model": cpu_info()["cpu_model"],
        "torch_threads": torch.get_num_threads(),
        "job_cores": job_cores,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchao": ao,
    }


def write_csv(path, rows: list[dict]) -> None:
    from common.atomic import write_text  # a reader never sees half a file

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
