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
* **Test cells run in the grader, not in the kernel** (when ``trusted_source``
  names the lesson's source notebook).  Every other cell runs in the student's
  kernel as before; a graded test cell (visible check or hidden tests) is run by a
  :class:`~tools.autograder.grader.GraderSession` in this (trusted) process, from
  the trusted source, with the student's names as proxies into the kernel: each use
  of a proxy is one execute request of data (``wire.py``) whose only output kept is
  the agent's answer.  The cell's outputs are what the grader printed and the error
  it chose to show, never text from the student's code.
"""

from __future__ import annotations

import json

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode

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
    trusted_source = Unicode("", help="the lesson's source notebook: its test cells run in the grader process, "
                                      "not in the kernel (empty: every cell runs in the kernel)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):  # type: ignore[override]
        self._dead: str | None = None
        self._total = 0
        self._cell_sizes: dict[int, int] = {}
        self._truncated: set[int] = set()
        self._session = None
        self._rpc = False
        self._fatal: BaseException | None = None
        if self.trusted_source:
            import nbformat

            from tools.autograder.grader import GraderSession

            trusted = nbformat.read(self.trusted_source, as_version=4)
            self._session = GraderSession(trusted, self._send, log=self.log.info)
            self._agent = False
        return super().preprocess(nb, resources, km=km)

    # -- the grader's requests to the kernel ----------------------------------
    def _execute_quietly(self, source: str) -> list:
        from tools.autograder.wire import MIME

        cell = NotebookNode(cell_type="code", source=source, metadata={}, outputs=[], execution_count=None)
        self._rpc = True
        try:
            cell = self.execute_cell(cell, self._test_index, store_history=False)
        except (DeadKernelError, CellTimeoutError) as e:
            self._fatal = e
            from tools.autograder.grader import KernelGone

            raise KernelGone(str(e)) from None
        finally:
            self._rpc = False
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
        if timed_out:
            self._timed_out = True
            raise TimeoutError(f"the student's code ran past the cell timeout ({self.timeout} s) and was interrupted")
        return [o for o in cell.outputs if o.get("output_type") == "display_data" and MIME in o.get("data", {})]

    def _send(self, text: str) -> str:
        from tools.autograder.wire import MIME

        if self._timed_out:
            raise TimeoutError("not run: the student's code timed out earlier in this test")
        if not self._agent:
            from tools.autograder.grader import agent_source

            self._execute_quietly(agent_source())
            self._agent = True
        answers = self._execute_quietly(f"__import__('sys').modules['_course_rpc'].serve({text!r})")
        if not answers:
            raise RuntimeError("the student's kernel gave the grader no answer")
        return answers[-1]["data"][MIME]

    def _run_test(self, cell, resources, index):
        from tools.autograder.grader import KernelGone

        self._test_index, self._timed_out = index, False
        try:
            outputs = self._session.run_test(cell.metadata["nbgrader"]["grade_id"], self.max_cell_output)
        except KernelGone:
            outputs = [{"output_type": "error", "ename": "GraderError", "evalue": "the kernel stopped answering",
                        "traceback": ["the kernel stopped answering while this test ran"]}]
        import nbformat

        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        cell.execution_count = None
        self.nb.cells[index] = cell  # nbclient stored the grader's requests at this index
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        return cell, resources

    # -- output cap ---------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        out = super().output(outs, msg, display_id, cell_index)
        if out is None:
            return out
        if self._rpc:  # a request of the grader: only the agent's answer is kept, nothing the student printed
            from tools.autograder.wire import MAX_BYTES, MIME

            keep = out.get("output_type") == "display_data" and len(str(out.get("data", {}).get(MIME, ""))) <= \
                MAX_BYTES * 4 // 3 + 8 and MIME in out.get("data", {})
            keep = keep or (out.get("output_type") == "error" and out.get("ename") == "CellTimeoutError")
            if not keep and outs and outs[-1] is out:
                outs.pop()
            return out if keep else None
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
        md = cell.metadata.get("nbgrader", {})
        is_test = bool(md.get("grade")) and not md.get("solution") and md.get("grade_id")
        try:
            if self._session is not None and is_test:
                self._test_cell = cell
                return self._run_test(cell, resources, index)
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
