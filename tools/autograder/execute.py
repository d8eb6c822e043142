"""nbgrader's Execute preprocessor, hardened against hostile notebooks.

``SafeExecute`` replaces ``nbgrader.preprocessors.Execute`` in the grader's
autograde pipeline.  Compared with it:

* **Every message from the kernel is bounded before it is parsed**: a message part
  over :data:`MAX_PART` bytes (header, metadata) is dropped unread, a content over
  :data:`MAX_CONTENT` is replaced by a short notice; comms (widget state) are ignored.
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
  ignores the interrupt (its output does not end within ``iopub_timeout`` of it),
  nbclient raises ``CellTimeoutError``; the kernel is killed and handled as above.
  Output still arriving after a real reply is no such case: it is waited for (up to
  the cell timeout) and never costs marks.
* **Test cells run in the grader, not in the kernel** (when ``trusted_source``
  names the lesson's source notebook).  Every other cell runs in the student's
  kernel as before; a graded test cell (visible check or hidden tests) is run by a
  :class:`~tools.autograder.grader.GraderSession` in this (trusted) process, from
  the trusted source, with the student's names as proxies into the kernel: each use
  of a proxy is one execute request of data (``wire.py``) whose only output kept is
  the agent's answer (one per request, at most :data:`wire.MAX_TEXT` characters
  received per request).  The cell's outputs are what the grader printed and the
  error it chose to show, never text from the student's code.
* **The socket folder takes no file once the kernel's sockets exist** (``socket_dir``,
  sandboxed kernels run as root: the folder's owner is root, the kernel writes through
  its group only until it is ready).
"""

from __future__ import annotations

import json
import os
import re

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode

from tools.autograder import wire
from tools.autograder.grader import GraderSession, KernelGone, agent_source
from tools.autograder.withhold import HIDDEN
from tools.common import grade_id, is_test

KERNEL_DIED = "KernelDied"
TRUNCATED = "... output truncated by the grader"
MAX_PART = 1 << 20  # bytes of a message's header, parent header or metadata
MAX_CONTENT = wire.MAX_TEXT + (1 << 16)  # bytes of a message's content: one answer of the agent fits
DROPPED = "[a message over the grader's size limit was dropped]"
_NAME_ERROR = re.compile(r"name '[A-Za-z_][A-Za-z0-9_]*' is not defined")


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


def _stub(msg_type: str) -> dict:
    """The content that replaces an oversized one (what the cell shows instead)."""
    if msg_type == "stream":
        return {"name": "stdout", "text": f"\n{DROPPED}\n"}
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        return {"data": {"text/plain": DROPPED}, "metadata": {}, "transient": {}, "execution_count": None}
    if msg_type in ("error", "execute_reply"):
        return {"status": "error", "ename": "GraderLimit", "evalue": DROPPED, "traceback": [DROPPED],
                "execution_count": None}
    return {}


def after_hidden(outputs: list, *, test: bool) -> list:
    """The outputs of a cell run after a hidden test sent its inputs to the kernel: nothing the kernel could
    have written.  A check shows passed or failed (and the error's type), any other cell one fixed line; the
    grader's own notes (dead kernel, timeout, truncation, memory) stay, for the status."""
    errors = [o for o in outputs if o.get("output_type") == "error"]
    kept: list = [NotebookNode(output_type="stream", name="stdout", text=f"\n{TRUNCATED}\n")
                  for o in outputs[:1] if any(TRUNCATED in str(p.get("text", "")) for p in outputs)]
    if test:
        line = f"checks: {'failed' if errors else 'passed'} (details not shown: hidden tests ran before)\n"
    else:
        line = "[output not kept: this cell ran after the hidden tests sent their inputs to your code]\n"
    kept.insert(0, NotebookNode(output_type="stream", name="stdout", text=line))
    for e in errors:
        ename = str(e.get("ename", ""))
        ename = ename if ename.isidentifier() and len(ename) <= 60 else "Exception"
        evalue = str(e.get("evalue", ""))
        if ename not in (KERNEL_DIED, "CellTimeoutError", "GraderError") and not _NAME_ERROR.fullmatch(evalue):
            memory = "can't allocate memory" in evalue or "out of memory" in evalue.lower()
            evalue = "can't allocate memory" if memory else ""
        kept.append(_error(ename, evalue[:1000]))
    return kept


def bound_session(session) -> None:
    """Make ``session`` (jupyter_client's) check every message's size before parsing any of it."""
    if getattr(session, "_course_bounded", False):
        return
    deserialize = session.deserialize

    def bounded(msg_list, content=True, copy=True):
        sizes = [len(p) for p in msg_list[:5]]
        if len(sizes) < 5 or max(sizes[1:4]) > MAX_PART:  # unreadable: a message addressed to no one
            return {"header": {"msg_type": "dropped", "msg_id": ""}, "parent_header": {}, "metadata": {},
                    "content": {}, "buffers": [], "msg_id": "", "msg_type": "dropped"}
        if sizes[4] <= MAX_CONTENT and sum(sizes) + sum(len(p) for p in msg_list[5:]) \
                <= MAX_CONTENT + 3 * MAX_PART:
            return deserialize(msg_list, content=content, copy=copy)
        msg = deserialize(list(msg_list[:5]), content=False, copy=copy)  # signature checked, content not parsed
        msg["content"], msg["buffers"] = _stub(msg["header"].get("msg_type", "")), []
        return msg

    session.deserialize = bounded
    session._course_bounded = True


class SafeExecute(Execute):
    """Execute with bounded messages, output caps and survival of kernel death (see the module docstring)."""

    max_cell_output = Integer(100_000, help="characters of output kept per cell").tag(config=True)
    max_notebook_output = Integer(2_000_000, help="characters of output kept per notebook").tag(config=True)
    trusted_source = Unicode("", help="the lesson's source notebook: its test cells run in the grader process, "
                                      "not in the kernel (empty: every cell runs in the kernel)").tag(config=True)
    socket_dir = Unicode("", help="the kernel's socket folder: closed to new files once the kernel is ready "
                                  "(empty: TCP on localhost)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):  # type: ignore[override]
        self._dead: str | None = None
        self._total = 0
        self._cell_sizes: dict[int, int] = {}
        self._truncated: set[int] = set()
        self._session = None
        self._agent = False
        self._rpc = False
        self._received = 0  # characters of answers received in the current request
        self._fatal: BaseException | None = None
        self._hidden = False  # the test cell running is a hidden one
        # output lagging behind a reply is waited for (up to the cell timeout), never a kernel that hangs; only
        # after an interrupt does output that does not end within iopub_timeout mean the interrupt was ignored
        self._iopub_after_interrupt = self.iopub_timeout
        self._iopub_lag = max(self.iopub_timeout, self.timeout or 0)
        # a graded call's answer comes after everything the student's code printed: wait for it while the
        # kernel lives (the submission timeout bounds the whole)
        self._iopub_rpc_lag = max(60, 10 * (self.timeout or 0))
        self._expect_reply()
        self._hidden_sent = False  # a hidden test sent inputs to the kernel: later output could carry them
        if self.trusted_source:
            trusted = nbformat.read(self.trusted_source, as_version=4)
            answers = {grade_id(c): c.source for c in nb.cells if c.cell_type == "code" and grade_id(c)
                       and c.get("metadata", {}).get("nbgrader", {}).get("solution")}
            code = [c.source for c in nb.cells if c.cell_type == "code" and not is_test(c)]
            self._session = GraderSession(trusted, self._send, log=self.log.info, answers=answers, student_code=code)
        return super().preprocess(nb, resources, km=km)

    def _expect_reply(self, rpc: bool = False) -> None:
        self.iopub_timeout, self.raise_on_iopub_timeout = self._iopub_rpc_lag if rpc else self._iopub_lag, False

    def process_message(self, msg, cell, cell_index):  # type: ignore[override]
        if self._rpc and msg.get("msg_type") == "stream":  # printed during a graded call: dropped unread
            return None
        return super().process_message(msg, cell, cell_index)

    async def _async_handle_timeout(self, timeout, cell=None):
        self.iopub_timeout, self.raise_on_iopub_timeout = self._iopub_after_interrupt, True
        return await super()._async_handle_timeout(timeout, cell)

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        bound_session(kc.session)
        if self.socket_dir and os.geteuid() == 0 and os.stat(self.socket_dir).st_uid == 0:
            os.chmod(self.socket_dir, 0o750)  # the kernel's sockets exist: no new file from it
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)  # what nbclient's setup_kernel calls

    # -- the grader's requests to the kernel ----------------------------------
    def _execute_quietly(self, source: str) -> list:
        cell = NotebookNode(cell_type="code", source=source, metadata={}, outputs=[], execution_count=None)
        self._rpc, self._received = True, 0
        self._expect_reply(rpc=True)
        try:
            cell = self.execute_cell(cell, self._test_index, store_history=False)
        except (DeadKernelError, CellTimeoutError) as e:
            self._fatal = e
            raise KernelGone(str(e)) from None
        finally:
            self._rpc = False
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
        if timed_out:
            self._timed_out = True
            raise TimeoutError(f"the student's code ran past the cell timeout ({self.timeout} s) and was interrupted")
        if self._received > wire.MAX_TEXT:
            raise RuntimeError(f"the student's kernel sent more than {wire.MAX_TEXT} characters for one request")
        return [o for o in cell.outputs if o.get("output_type") == "display_data" and wire.MIME in o.get("data", {})]

    def _send(self, text: str) -> str:
        if self._timed_out:
            raise TimeoutError("not run: the student's code timed out earlier in this test")
        if not self._agent:
            self._execute_quietly(agent_source())
            self._agent = True
        self._hidden_sent = self._hidden_sent or self._hidden
        answers = self._execute_quietly(f"__import__('sys').modules['_course_rpc'].serve({text!r})")
        if not answers:
            raise RuntimeError("the student's kernel gave the grader no answer")
        return answers[-1]["data"][wire.MIME]

    def _run_test(self, cell, resources, index):
        self._test_index, self._timed_out = index, False
        self._hidden = HIDDEN in cell.source
        try:
            outputs = self._session.run_test(grade_id(cell), self.max_cell_output)
        except KernelGone:
            outputs = [{"output_type": "error", "ename": "GraderError", "evalue": "the kernel stopped answering",
                        "traceback": ["the kernel stopped answering while this test ran"]}]
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        if self._hidden_sent and not self._hidden:  # a visible check after hidden inputs reached the kernel
            cell.outputs = after_hidden(cell.outputs, test=True)
        cell.execution_count = None
        self.nb.cells[index] = cell  # nbclient stored the grader's requests at this index
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        return cell, resources

    def handle_comm_msg(self, outs, msg, cell_index):  # type: ignore[override]
        """Comms (widgets) are the kernel's: never stored, never interpreted (a malformed one made nbclient
        raise and nbgrader drop the whole submission)."""
        return None

    # -- output cap ---------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        out = super().output(outs, msg, display_id, cell_index)
        if out is None:
            return out
        if self._rpc:  # a request of the grader: one answer kept, nothing the student printed
            if outs and outs[-1] is out:
                outs.pop()
            answer = out.get("data", {}).get(wire.MIME) if out.get("output_type") == "display_data" else None
            if isinstance(answer, str):
                self._received += len(answer)
                if self._received <= wire.MAX_TEXT:
                    outs[:] = [o for o in outs if o.get("output_type") == "error"] + [out]
                    return out
            elif out.get("output_type") == "error" and out.get("ename") == "CellTimeoutError":
                outs.append(out)
                return out
            return None
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
            if self._session is not None and is_test(cell) and grade_id(cell):
                return self._run_test(cell, resources, index)
            self._expect_reply()
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._dead = self._exit_description()
            cell.outputs = list(cell.get("outputs", [])) + [_error(KERNEL_DIED, f"{self._dead} while running this cell")]
        except CellTimeoutError:
            self._kill_kernel()
            self._dead = "the kernel did not respond to an interrupt after the cell timeout and was killed"
            cell.outputs = list(cell.get("outputs", [])) + [
                _error("CellTimeoutError", f"{self._dead} (cell timeout {self.timeout} s)")
            ]
        if self._hidden_sent:  # the student's code may print what the hidden tests sent it
            cell.outputs = after_hidden(cell.outputs, test=False)
        self.nb.cells[index] = cell
        return cell, resources
