# The course's commands.  Every target sets up what it needs: the first run
# creates a virtual environment in .venv/ and installs the course into it.
#
#   make lab      open the course in JupyterLab
#   make test     the whole verification (what CI runs)
#   make student  regenerate notebooks/ from solutions/ (nbgrader)
#   make grade ASSIGNMENT=02_attention_scoring SUBMISSIONS=path/to/folder
#   make feedback ASSIGNMENT=02_attention_scoring   (after manual grading)
#   make bench    benchmark scripts (print side-by-side ratios)
#   make site     the course website, static HTML in build/site/ (REPO_URL=... for source links)
#   make env-locked  install exactly the versions in requirements-lock.txt
#   make lock     record this environment's versions in requirements-lock.txt
#   make versions where this environment differs from requirements-lock.txt

PYTHON       ?= python3
VENV         ?= .venv
PY           := $(VENV)/bin/python
STAMP        := $(VENV)/.installed
TEST_WORKERS ?= 2
LAB_ARGS     ?=
D2L_VERSION  := 1.0.3
# LOCKED=1 installs exactly the versions the stored outputs were made with (opt-in:
# the default install takes what the machine's package index offers).
LOCK         := requirements-lock.txt
LOCK_ARGS    := $(if $(filter 1,$(LOCKED)),-c $(LOCK))
# nbgrader runs helpers (alembic) from PATH: the environment's bin/ comes first.
export PATH  := $(abspath $(VENV))/bin:$(PATH)

.PHONY: env env-locked lock versions lab test unit notebooks student check-student grade feedback bench site lint clean help

help:
	@sed -n '2,15p' Makefile

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(LOCK_ARGS) -e '.[dev,instructor,site]'
	# d2l is only a reference implementation for the tests; its 2023 pins
	# (numpy, pandas, matplotlib, scipy) would downgrade the course's stack.
	$(PY) -m pip install --quiet --no-deps d2l==$(D2L_VERSION)
	touch $(STAMP)

env: $(STAMP)

# The reproducible install: every package at the version in requirements-lock.txt.
# It fails where the package index lacks one of them (then use `make env`).
env-locked:
	rm -f $(STAMP)
	$(MAKE) env LOCKED=1

# Run right after re-executing the lessons: the lock records what made their outputs.
lock: env
	$(PY) tools/versions.py lock

versions: env
	$(PY) tools/versions.py drift

# Jupyter refuses to run as root unless told; containers often are root.
ALLOW_ROOT   := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: env
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(ALLOW_ROOT) \
	  --LabApp.app_settings_dir="$(CURDIR)/jupyter/lab-settings" \
	  --LabApp.default_url='/lab/tree/notebooks/00_setup/00_setup.ipynb' $(LAB_ARGS)

# Two test workers on two cores: one math thread each (two each oversubscribe
# the cores and made the small-tensor tests ~10x slower).
TEST_ENV     := COURSE_QUICK=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# Unit tests of lib, strict nbval over every solution notebook (quick mode),
# the student-notebook regeneration check and the grading pipeline: one run.
test: env
	$(TEST_ENV) $(PY) -m pytest tests solutions \
	  --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	  --nbval-cell-timeout=900 -n $(TEST_WORKERS) --dist loadscope -p no:cacheprovider

unit: env
	$(TEST_ENV) $(PY) -m pytest tests -n $(TEST_WORKERS) -p no:cacheprovider

notebooks: env
	$(TEST_ENV) $(PY) -m pytest solutions --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg -n $(TEST_WORKERS) --dist loadscope -p no:cacheprovider

student: env
	$(PY) tools/student.py generate

check-student: env
	$(PY) tools/student.py check

grade: env
	@test -n "$(ASSIGNMENT)" || { echo "usage: make grade ASSIGNMENT=<lesson> SUBMISSIONS=<folder>"; exit 2; }
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade ASSIGNMENT=<lesson> SUBMISSIONS=<folder>"; exit 2; }
	$(PY) -m tools.grade "$(ASSIGNMENT)" "$(SUBMISSIONS)" $(GRADE_ARGS)

feedback: env
	@test -n "$(ASSIGNMENT)" || { echo "usage: make feedback ASSIGNMENT=<lesson>"; exit 2; }
	$(PY) -m tools.grade "$(ASSIGNMENT)" --feedback-only

bench: env
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The course website from the student lessons (tools/website.py; README, "The course as a website").
# It builds offline into build/site/ (git-ignored), one folder any static host serves.
site: env
	$(PY) tools/website.py build $(if $(REPO_URL),--repo-url "$(REPO_URL)")

lint: env
	$(VENV)/bin/ruff check lib tests bench tools

clean:
	rm -rf grading .pytest_cache
