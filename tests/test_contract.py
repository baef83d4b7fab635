"""The OpenAPI document is the API's public contract: schemathesis, with every check, against the real
`python -m api`, finds the behaviour true to it. A fixed seed and a bounded number of examples keep the run short
and the same from one run to the next."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from broker.settings import Settings
from tests.processes import serving_api

SEED = "1"
EXAMPLES = "100"


async def test_schemathesis_finds_the_api_true_to_its_openapi_document(settings: Settings, tmp_path: Path) -> None:
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
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(100):
            output, _ = await schemathesis.communicate()
    report = output.decode()
    assert schemathesis.returncode == 0, report
    assert " passed" in report and "failed" not in report.split("SUMMARY")[-1], report
