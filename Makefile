# Two set-up commands on a fresh machine:  `make demo`  and  `make test`.
# Every pip install goes through constraints.txt (torch 2.13.0 CPU build, torchvision 0.28.0).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
PIPC    = $(PIP) install --disable-pip-version-check -q -c constraints.txt
STAMP   = $(VENV)/.installed
REPORT ?= demo_report

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPC) --upgrade pip
	$(PIPC) torch==2.13.0
	$(PIPC) -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/commonspace demo --out $(REPORT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -n 2 --durations=15

# The edit-test loop: everything not marked @pytest.mark.slow (under a minute on 2 cores).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(REPORT) .pytest_cache build *.egg-info src/*.egg-info
