# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv/ first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py .ci/setup_venv.sh | sha1sum | cut -c1-12)

.PHONY: venv fixtures demo test bench clean
venv: $(STAMP)

$(STAMP): setup.py .ci/setup_venv.sh
	bash .ci/setup_venv.sh $(VENV)
	touch $@

demo: venv
	$(BIN)/python -m igrpo_megatron.demo

# The real pretrained model the tests need, built once per machine into ~/.cache/igrpo-megatron.
fixtures: venv
	$(BIN)/python -m igrpo_megatron.demo.real_model

test: fixtures
	$(BIN)/python -m pytest -q --durations=40 tests

clean:
	rm -rf $(VENV)
