"""The grading pipeline behind ``python -m tools.grade`` (see docs/grading.md).

* ``core``: the grading run (set up, check, autograde in workers, merge, report)
* ``config``: limits, statuses, the course's folders, the run lock
* ``records``: the typed job/result records between the parent and its workers
* ``submissions``: finding and checking submissions (colliding ids, tampering)
* ``lanes``: the worker processes, their timeouts and kills
* ``worker``: autograde + feedback of one submission in a scratch course (a subprocess)
* ``sandbox`` / ``sandbox_kernel``: the bubblewrap sandbox of each kernel and its launcher
* ``execute``: nbgrader's Execute hardened (output caps, dead kernels)
* ``gradebook``: the course gradebook (merge, manual-grade guard, scores)
* ``feedback`` / ``sanitize``: hidden tests out of the feedback; safe HTML, no attachments
* ``report``: rows, the grade table, the files placed in ``grading/``
* ``integrity``: the similarity report (copydetect)
* ``watchdog``: cleans up after a parent that died

The hostile submissions of the tests and the benchmark live beside the tests: ``tests/grading_fixtures.py``.
"""
