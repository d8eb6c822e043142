"""The grading pipeline behind ``python -m tools.grade`` (see docs/grading.md).

* ``core``: the grading run (set up, check, autograde in workers, merge, report)
* ``submissions``: finding and checking submissions
* ``worker``: autograde + feedback of one submission in a scratch course (a subprocess)
* ``execute``: nbgrader's Execute hardened (output caps, dead kernels)
* ``sandbox_kernel``: the kernel launcher that applies the resource limits
* ``feedback``: the feedback preprocessor that hides the hidden tests
"""
