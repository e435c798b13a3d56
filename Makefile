# The course in two commands:
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the unit tests and execute every notebook (nbval)
# Other targets: make setup, make book, make student, make assignments, make grade, make bench, make test-portable,
# make clean.
# Extra arguments: make lab LAB_ARGS="--port 9999"   make test TEST_ARGS="-k 02 -x"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := tl-course
# Open a browser only where there is a screen to show it on.
NO_BROWSER := $(if $(or $(DISPLAY),$(WAYLAND_DISPLAY),$(filter Darwin,$(shell uname -s))),,--no-browser)
# Jupyter refuses to run as root unless told (containers, cloud machines).
AS_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)

.PHONY: setup lab test book student bench clean

setup: $(STAMP)

# jupyter/overrides.json: an offline course never asks "get notified about Jupyter news?" nor checks for updates.

$(STAMP): pyproject.toml constraints.txt jupyter/overrides.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,test,book,grading]'
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

lab: setup
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python (transfer-learning course)" \
		--env OMP_WAIT_POLICY PASSIVE
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		$(NO_BROWSER) $(AS_ROOT) $(LAB_ARGS)

# OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin-wait, and a chapter runs several times slower
# whenever another process shares the cores (measured: chapter 03 took 273 s instead of 72 s).
test: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest tests notebooks tl_helpers --doctest-modules \
		--nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
		--nbval-cell-timeout 600 --durations=15 $(TEST_ARGS)

# Every chapter again under other CPU kernels and thread counts (generic kernels with 1 thread, AVX2 kernels with
# 2), each run with an empty feature cache and no checkpoints, compared with the stored outputs: a stored output
# must hold on every CPU. Run it before committing executed notebooks (CONTRIBUTING.md).
# make test-portable PORTABLE_ARGS="--runs default:1 notebooks/05_two_phase_fine_tuning.ipynb"
.PHONY: test-portable
test-portable: setup
	$(BIN)/python scripts/test_portable.py $(PORTABLE_ARGS)

# The book reads the notebooks' stored outputs (nothing is re-executed): HTML in build/book/.
# Authors: after `make book`, `$(BIN)/mdbook serve` rebuilds on every edit of book/src/*.md.
book: setup
	$(BIN)/python scripts/build_book.py

student: setup
	$(BIN)/python scripts/make_student.py

# Instructors (book/src/instructors.md): the chapters as nbgrader assignments, and a class graded.
# make assignments CHAPTERS="02 07"      make grade SUBMISSIONS=DIR [CHAPTERS=02] [GRADE_ARGS="--timeout 300"]
.PHONY: assignments grade test-grading
assignments: setup
	$(BIN)/python scripts/grade_class.py $(GRADE_ARGS) assignments $(CHAPTERS)

grade: setup
	@test -n "$(SUBMISSIONS)" || { echo "make grade SUBMISSIONS=DIR: DIR/<student>/<chapter>/<chapter>.ipynb"; exit 2; }
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python scripts/grade_class.py $(GRADE_ARGS) grade $(SUBMISSIONS) $(CHAPTERS)

# make test grades chapter 02 for four made-up learners; this grades every chapter (each re-executed 4 times).
test-grading: setup
	GRADING_CHAPTERS=all OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest tests/test_grading.py -k a_class_is_graded \
		--durations=15 $(TEST_ARGS)

# The student edition under nbval: every chapter again, the exercise cells raising NotImplementedError
# (tagged raises-exception). As slow as the notebooks themselves, so not part of `make test`.
.PHONY: test-student
test-student: student
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest build/student --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
		--nbval-cell-timeout 600 --durations=15 $(TEST_ARGS)

# Every recipe on the 5 folds of Clipart-8, settings chosen inside each fold (hours on 2 cores), resumable: see
# benchmarks/run.py and benchmarks/README.md; then the
# `fashion` entry: chapter 08's experiments on Fashion-MNIST with 10 seeds (benchmarks/fashion.py, ~20 min).
# make bench BENCH_ARGS="--recipes linear_probe,keras_guide --folds 3"    (--quick: a smoke run)
# make bench-clipart / make bench-fashion FASHION_ARGS="--seeds 20"      run one of them
# `adaptation`: chapter 09's grid on both digit pairs (benchmarks/adaptation.py, ~40 CPU-min); `text`: chapter 10's
# labels-per-class comparison with fine-tuning chosen on validation (benchmarks/text.py, ~2 CPU-hours). Both resume.
.PHONY: bench-clipart bench-fashion bench-adaptation bench-text
bench: bench-clipart bench-fashion bench-adaptation bench-text

bench-clipart: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-fashion: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.fashion $(FASHION_ARGS)

bench-adaptation: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.adaptation --pair "synthetic->mnist" --seeds 5
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.adaptation --seeds 10

bench-text: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.text --draws 3
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.text --draws 5 --points 5,20

clean:
	rm -rf build
