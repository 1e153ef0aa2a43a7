# Entry points; see README.md and bench/README.md.
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: test bench bench-smoke

test:
	scripts/test

# The full benchmark (router vs nginx vs no proxy; add BENCH_ARGS=--with-litellm for LiteLLM).
bench: .venv/bin/api-router
	$(PYTHON) -m bench $(BENCH_ARGS)

# Seconds-long correctness run of the same harness (what tests/test_bench_smoke.py runs).
bench-smoke: .venv/bin/api-router
	$(PYTHON) -m bench --smoke $(BENCH_ARGS)

.venv/bin/api-router:
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/python -m pip install --quiet -e .
