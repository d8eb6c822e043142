"""nbgrader configuration: solutions/ is the source, notebooks/ the release.

Each lesson is one nbgrader *assignment*: a folder holding one notebook of the
same name, e.g. ``solutions/02_attention_scoring/02_attention_scoring.ipynb``.
``make student`` writes ``notebooks/02_attention_scoring/02_attention_scoring.ipynb``.
Everything grading writes (submissions, autograded copies, feedback and the
gradebook) lives under the git-ignored ``grading/`` folder.
"""

import os
import sys

c = get_config()  # noqa: F821  (provided by nbgrader/traitlets)

ROOT = os.path.dirname(os.path.abspath(__file__))
GRADING = os.path.join(ROOT, "grading")
# so that nbgrader (and the formgrader) can import the course's feedback preprocessor
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

c.CourseDirectory.course_id = "attention-course"
c.CourseDirectory.root = ROOT
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(GRADING, "gradebook.db")

# Each lesson folder also holds its text source NN_topic.py (jupytext, with the
# solutions in it): never copy it into the release or a submission.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]

# What a student sees in place of a solution region.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Feedback never shows the hidden tests: autograde restores them into the
# autograded notebooks, and nbgrader's feedback would render them.  This makes
# `nbgrader generate_feedback` and the formgrader's button as safe as
# `make feedback` (docs/grading.md, tools/autograder/feedback.py).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "tools.autograder.feedback.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
