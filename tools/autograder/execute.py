"""nbgrader's Execute preprocessor, hardened against hostile notebooks.

``SafeExecute`` replaces ``nbgrader.preprocessors.Execute`` in the grader's
autograde pipeline.  Compared with it:

* **Output is capped while it arrives** (per cell and per notebook, in
  characters), so a cell printing gigabytes neither fills the grader's memory
  nor the feedback.  nbgrader's ``LimitOutput`` only counts lines after the
  fact: one line of 100 MB passes it.
* **A dead kernel does not abort the notebook.**  nbclient raises
  ``DeadKernelError`` (``os._exit()``, a crash, a limit that kills the process)
  and nbgrader then drops the whole submission.  Here the cell gets an error
  output ``KernelDied`` and every later code cell ``KernelDied: not run``, so the
  grades earned before the crash are saved and the rest score zero.
* **An unresponsive kernel is killed.**  When a cell times out and the kernel
  ignores the interrupt, nbclient raises ``CellTimeoutError``; the kernel is
  killed and handled as above.
"""

from __future__ import annotations

import json

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer

KERNEL_DIED = "KernelDied"
TRUNCATED = "... output truncated by the grader"


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(
        output_type="error", ename=ename, evalue=evalue, traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
    )


def _size(out: NotebookNode) -> int:
    if out.get("output_type") == "stream":
        return len(out.get("text", ""))
    if out.get("output_type") == "error":
        return len(out.get("evalue", "")) + sum(len(line) for line in out.get("traceback", []))
    return len(json.dumps(out.get("data", {}), default=str))


class SafeExecute(Execute):
    """Execute with output caps and survival of kernel death (see the module docstring)."""

    max_cell_output = Integer(100_000, help="characters of output kept per cell").tag(config=True)
    max_notebook_output = Integer(2_000_000, help="characters of output kept per notebook").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):  # type: ignore[override]
        self._dead: str | None = None
        self._total = 0
        self._cell_sizes: dict[int, int] = {}
        self._truncated: set[int] = set()
        return super().preprocess(nb, resources, km=km)

    # -- output cap ---------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        out = super().output(outs, msg, display_id, cell_index)
        if out is None:
            return out
        size = _size(out)
        used = self._cell_sizes.get(cell_index, 0)
        room = min(self.max_cell_output - used, self.max_notebook_output - self._total)
        if size <= room:
            self._cell_sizes[cell_index] = used + size
            self._total += size
            return out
        # Over the cap: keep what fits of a text stream, drop anything else.
        if outs and outs[-1] is out:
            outs.pop()
        if out.get("output_type") == "stream" and room > 0:
            out.text = out.text[:room]
            outs.append(out)
            self._cell_sizes[cell_index] = used + room
            self._total += room
        elif out.get("output_type") == "error":
            out.evalue = out.evalue[:1000]
            out.traceback = [line[:1000] for line in out.traceback[-20:]]
            outs.append(out)
        if cell_index not in self._truncated:
            self._truncated.add(cell_index)
            limit = min(self.max_cell_output, self.max_notebook_output)
            outs.append(NotebookNode(output_type="stream", name="stdout",
                                     text=f"\n{TRUNCATED} (over {limit} characters) ...\n"))
        return None

    # -- dead and unresponsive kernels --------------------------------------
    def _exit_description(self) -> str:
        try:
            proc = self.km.provisioner.process  # type: ignore[union-attr]
            code = proc.wait(timeout=2)
        except Exception:  # noqa: BLE001
            return "the kernel died"
        if code is None:
            return "the kernel died"
        if code < 0:
            return f"the kernel was killed by signal {-code}"
        return f"the kernel exited with code {code}"

    def _kill_kernel(self) -> None:
        try:
            proc = self.km.provisioner.process  # type: ignore[union-attr]
            proc.kill()
        except Exception:  # noqa: BLE001
            pass

    def preprocess_cell(self, cell, resources, index):  # type: ignore[override]
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        if self._dead is not None:
            cell.outputs = [_error(KERNEL_DIED, f"not run: {self._dead} in an earlier cell")]
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._dead = self._exit_description()
            cell.outputs = list(cell.get("outputs", [])) + [_error(KERNEL_DIED, f"{self._dead} while running this cell")]
        except CellTimeoutError:
            self._kill_kernel()
            self._dead = "the kernel did not respond to an interrupt after the cell timeout and was killed"
            cell.outputs = list(cell.get("outputs", [])) + [
                _error("CellTimeoutError", f"{self._dead} (cell timeout {self.timeout} s)")
            ]
        self.nb.cells[index] = cell
        return cell, resources
