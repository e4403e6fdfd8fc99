# Two commands from a fresh clone: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint test-slow test-deep build bench bench-methods clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exactly this torch: the local CPU build (a looser pin pulls CUDA wheels).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[tracr,hf,plot,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m groundtruth.cli demo

# tests/test_report.py renders the report page in headless Chromium: `apt-get install -y chromium`
# (Debian's; Playwright's own downloads are not used), or CHROMIUM=path to another Chromium executable.
test: $(STAMP)
	$(PY) -m pytest -q

# ruff (ruff.toml): pyflakes, pycodestyle, import order, bugbear, pyupgrade.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The slow tests: recovery of every library program and every variant over ten seeds, both ablations.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The random-program properties with the deep hypothesis profile (many more examples).
test-deep: $(STAMP)
	HYPOTHESIS_PROFILE=deep $(PY) -m pytest -q -m "slow or not slow" tests/test_strategies.py

build: $(STAMP)
	$(PY) -m groundtruth.cli build

bench: $(STAMP)
	$(PY) bench/run.py

# Time per method (Edge Pruning, ACDC, EAP, EAP-IG): the library (from groundtruth.compare's JSON)
# and one IOI batch on a GPT-2-small-shaped model; ACDC and Edge Pruning extrapolated from unit costs.
bench-methods: $(STAMP)
	$(PY) bench/methods.py all --json out/bench_methods.json

clean:
	rm -rf $(VENV)
