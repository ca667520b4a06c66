# Sluice: the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo assistant-demo test lint install redis-server stack-up stack-down train profiles produce bench chaos llm corpus clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the CPU build where it is available locally, else the platform default
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP) redis-server

# A real redis-server: Debian's package when missing (needs root or sudo), or set SLUICE_REDIS_SERVER.
redis-server:
	@if [ -n "$$SLUICE_REDIS_SERVER" ] || command -v redis-server >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)); \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get install -y -q redis-server; \
	else echo "redis-server is missing: install it, or set SLUICE_REDIS_SERVER=/path/to/redis-server" >&2; exit 1; fi

demo: install
	$(BIN)/python -m sluice.demo

# The conversational assistant: corpus -> live index, a scripted conversation, answers with citations.
assistant-demo: install
	$(BIN)/python -m sluice.assistant_demo

llm: $(STAMP)
	$(BIN)/python -m models.convert_llm

corpus: $(STAMP)
	$(BIN)/python -m sluice.corpus publish

test: install
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy dataflows operators models state sluice perf tests

stack-up: install
	$(BIN)/python -m sluice.stack up

stack-down:
	$(BIN)/python -m sluice.stack down

train: $(STAMP)
	$(BIN)/python -m models.train_fraud

profiles: $(STAMP)
	$(BIN)/python -m sluice.profiles

produce: $(STAMP)
	$(BIN)/python -m sluice.generator --rate 5000 --count 100000

clean:
	rm -rf .stack .recovery
