# genrec: two commands on a fresh machine, `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed
SHARED_DATA := $(abspath ../shared/data)
export GENREC_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: install quickstart test lint docs benchmark clean

install: $(STAMP)

# Re-run only when the package metadata changes; torch goes first so pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,content,serve,ann,gbdt,scale,bench,docs]" "$(TORCH_SPEC)"
	touch $(STAMP)

# Baselines + HSTU on MovieLens-1M under a 12-minute training budget, a bundle, sample recommendations.
quickstart: install
	$(BIN)/genrec quickstart --out runs/quickstart
	$(BIN)/genrec compare runs/quickstart/itemknn runs/quickstart/hstu --metric hr@10 --metric ndcg@10

lint: install
	$(BIN)/ruff check src tests benchmarks

test: install lint
	$(BIN)/python -m pytest

# The site: reference and results pages (and the README's results block) regenerated, then built with --strict.
docs: install
	$(BIN)/python -m genrec.docs_gen
	$(BIN)/mkdocs build --strict --site-dir site

benchmark: install
	$(BIN)/python benchmarks/baselines.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
