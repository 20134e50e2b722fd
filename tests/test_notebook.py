"""A run awaited in a real Jupyter kernel (nbclient) shows its progress in the cell, by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

CELL = """
import asyncbatch
from pathlib import Path
from typing import Any

Path("cell.jsonl").write_text("".join(f'{{"id": {i}, "company": "Company {i}"}}\\n' for i in range(600)))
async with asyncbatch.simulated(latency=0.3) as endpoint:
    stats = await asyncbatch.run(
        asyncbatch.RunConfig(
            input_path="cell.jsonl",
            endpoint=endpoint,
            limits=asyncbatch.Limits(concurrency=50),
            request=asyncbatch.RequestDefaults(template="About {company}"),
        )
    )
print(stats.succeeded, "succeeded")
"""


def test_a_notebook_run_shows_live_progress_in_its_cell_and_finishes(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    updates: list[str] = []
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    process = client.process_message

    def seen(msg: dict[str, Any], cell: Any, cell_index: int) -> Any:  # every redraw, not only the cell's last state
        if msg["header"]["msg_type"] in ("display_data", "update_display_data"):
            updates.append(msg["content"]["data"].get("text/plain", ""))
        return process(msg, cell, cell_index)

    client.process_message = seen  # type: ignore[method-assign]
    client.execute()
    outputs = notebook.cells[0].outputs
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o["name"] == "stdout")
    assert "600 succeeded" in printed
    assert any("/600" in text for text in updates) and "600/600 100%" in updates[-1]
    assert len(updates) >= 2  # drawn, then redrawn as the run went: not one picture at the end
    shown = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "display_data"]
    assert any(text.startswith("SIMULATED: a local simulator at") for text in shown)  # said once the run started
    final = [text for text in shown if "/600" in text]
    assert len(final) == 1 and "600/600" in final[0]  # the one progress output, redrawn in place
