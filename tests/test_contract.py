"""The OpenAPI document is the API's public contract: schemathesis, with every check, against the real
`python -m api`, finds the behaviour true to it. A fixed seed and a bounded number of examples keep the run short
and the same from one run to the next.

One rule is of time, which no JSON Schema states: an order whose deadline has passed is refused (422
`deadline_passed`, as the document says). The hooks below drop that one failure of `positive_data_acceptance`, and
only where the deadline sent had indeed passed."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from broker.settings import Settings
from tests.processes import serving_api

SEED = "1"
EXAMPLES = "100"
HOOKS = """
from datetime import UTC, datetime

import schemathesis


@schemathesis.hook
def filter_failure(context, failure, case, response):
    deadline = case.body.get("deadline") if isinstance(case.body, dict) else None
    refused_late = (
        type(failure).__name__ == "RejectedPositiveData"
        and response.status_code == 422
        and b'"deadline_passed"' in response.content
        and isinstance(deadline, str)
        and datetime.fromisoformat(deadline) <= datetime.now(UTC)
    )
    return not refused_late
"""


async def test_schemathesis_finds_the_api_true_to_its_openapi_document(settings: Settings, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS)
    async with serving_api(settings) as port:
        schemathesis = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "all",
            "--seed",
            SEED,
            "--max-examples",
            EXAMPLES,
            "--workers",
            "1",
            "--generation-database",
            "none",  # no examples remembered from an earlier run: the same run every time
            cwd=tmp_path,  # where it keeps its crash cache, out of the project
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(100):
            output, _ = await schemathesis.communicate()
    report = output.decode()
    assert schemathesis.returncode == 0, report
    assert " passed" in report and "failed" not in report.split("SUMMARY")[-1], report
