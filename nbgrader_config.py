"""nbgrader configuration: solutions/ is the source, notebooks/ the release.

Each lesson is one nbgrader *assignment*: a folder holding one notebook of the
same name, e.g. ``solutions/02_attention_scoring/02_attention_scoring.ipynb``.
``make student`` writes ``notebooks/02_attention_scoring/02_attention_scoring.ipynb``.
Everything grading writes (submissions, autograded copies, feedback and the
gradebook) lives under the git-ignored ``grading/`` folder.
"""

import os

c = get_config()  # noqa: F821  (provided by nbgrader/traitlets)

ROOT = os.path.dirname(os.path.abspath(__file__))
GRADING = os.path.join(ROOT, "grading")

c.CourseDirectory.course_id = "attention-course"
c.CourseDirectory.root = ROOT
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(GRADING, "gradebook.db")

# What a student sees in place of a solution region.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
