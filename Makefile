# `make test` and `make demo` work on a fresh clone: both create .venv from requirements.txt first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo pipeline lint clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(PY) scripts/gpu_check.py --device cpu

# The unit tier alone (tests/unit), for feedback while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

# Writes to runs/demo (git-ignored); fig/ holds the committed copies, made by hand with
# `$(PY) toy_two_layer.py --out fig`.
demo: $(STAMP)
	$(PY) toy_two_layer.py

# Trains, prunes (greedy and three baselines), fine-tunes, re-trains and times MobileNetV2 and
# ResNet34 on the synthetic dataset (under 15 minutes on 2 cores); writes runs/pipeline (git-ignored;
# `make pipeline PIPELINE_ARGS=--resume` continues or re-tables a run). fig/pipeline.png and
# fig/pipeline_table.md are copies of a real run's pipeline.png and table.md, made by hand.
pipeline: $(STAMP)
	$(PY) scripts/pipeline.py $(PIPELINE_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
