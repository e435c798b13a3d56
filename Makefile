# The course in two commands:
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the unit tests and execute every notebook (nbval)
# Other targets: make setup, make book, make student, make bench, make clean.
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
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,test,book]'
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

# The book reads the notebooks' stored outputs (nothing is re-executed): HTML in build/book/.
# Authors: after `make book`, `$(BIN)/mdbook serve` rebuilds on every edit of book/src/*.md.
book: setup
	$(BIN)/python scripts/build_book.py

student: setup
	$(BIN)/python scripts/make_student.py

# The student edition under nbval: every chapter again, the exercise cells raising NotImplementedError
# (tagged raises-exception). As slow as the notebooks themselves, so not part of `make test`.
.PHONY: test-student
test-student: student
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest build/student --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
		--nbval-cell-timeout 600 --durations=15 $(TEST_ARGS)

# Every recipe on Clipart-8 splits 0-4 (about 1.5 h on 2 cores), resumable: see benchmarks/run.py; then the
# `fashion` entry: chapter 08's strategies on Fashion-MNIST with more seeds (benchmarks/fashion.py, ~20 min).
# make bench BENCH_ARGS="--recipes linear_probe,keras_guide --splits 3"   (--quick: a 1-minute smoke run)
# make bench-clipart / make bench-fashion FASHION_ARGS="--seeds 20"      run one of the two
.PHONY: bench-clipart bench-fashion
bench: bench-clipart bench-fashion

bench-clipart: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-fashion: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.fashion $(FASHION_ARGS)

clean:
	rm -rf build
