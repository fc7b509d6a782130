# One virtualenv (.venv) for everything. TORCH pins the torch build pip should take first; on this project's
# machines torch==2.13.0 resolves to the CPU build on local disk, elsewhere to PyPI's normal build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
CLIP ?= samples/bigbuckbunny.mp4

.PHONY: install test test-all gpu-check lint format bench bench-video bench-model demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@command -v ffmpeg >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; } \
		|| echo "warning: ffmpeg not found; install it (apt install ffmpeg / brew install ffmpeg) for the fallback decoder"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-all: install  ## also the slow and GPU tiers (real checkpoints; needs the hub or a local copy)
	$(PY) -m pytest -q -m ""

gpu-check:  ## on a CUDA machine: gpu tests + bench_gpu (0.5B, 7B if it fits), < 5 min, offline; no install step
	$(PY) bench/gpu_check.py

lint: install
	$(VENV)/bin/ruff check scissor_cli tests bench
	$(VENV)/bin/ruff format --check scissor_cli tests bench

format: install
	$(VENV)/bin/ruff format scissor_cli tests bench
	$(VENV)/bin/ruff check --fix scissor_cli tests bench

bench: install
	$(PY) bench/bench_scc.py

bench-video: install
	$(PY) bench/bench_video.py

bench-model: install
	$(PY) bench/bench_model.py

demo: install
	$(VENV)/bin/scissor ask $(CLIP) "What is happening in this video?"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
