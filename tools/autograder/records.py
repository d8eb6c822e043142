"""The typed records the grading parent and its workers exchange (JSON files in the job's folder).

* ``JobSpec`` (``job.json``): what a worker needs to grade one submission, written by the parent;
* ``Result`` (``result.json``): what the worker reports back, read by the parent.

Both are plain data: a worker never writes anything the parent executes or unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

Note = tuple[str, str]  # (status, text)


@dataclass
class JobSpec:
    course: str  # the scratch course folder of this submission
    course_id: str
    source_directory: str
    assignment: str
    student: str
    notebook: str
    cell_timeout: int
    max_cell_output: int
    max_notebook_output: int
    feedback_preprocessors: list[str] = field(default_factory=list)  # the course's (nbgrader_config.py)
    ipc_dir: str = ""  # kernel sockets (sandboxed kernels only), else TCP on localhost
    env: dict[str, str] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        raw = json.loads(path.read_text())
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


@dataclass
class Result:
    notes: list[Note] = field(default_factory=list)
    autograded: bool = False
    feedback: bool = False
    log: str = ""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: Path) -> Result:
        raw = json.loads(path.read_text())
        notes = [(str(s), str(t)) for s, t in raw.get("notes", [])]
        return cls(notes, bool(raw.get("autograded")), bool(raw.get("feedback")), str(raw.get("log", "")))

    @classmethod
    def failed(cls, status: str, text: str, log: str = "") -> Result:
        return cls([(status, text)], False, False, log)
