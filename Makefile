# nightkit — `make demo` runs the whole method on synthetic dark videos; `make test` runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/demo.yaml
SET    ?=
# torch and torchvision are pinned here (not in pyproject) so a GPU user's conda env keeps its own build
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: env demo test lab lint bench clean-venv

env: $(VENV)/.nightkit-env

$(VENV)/.nightkit-env: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name nightkit --display-name "Python (nightkit)" >/dev/null
	@touch $@

demo: env
	$(PY) -m kit.pipeline run $(PARAMS) $(foreach s,$(SET),--set $(s))

test: env
	@# pytest exits 5 when it collects no tests: not a failure
	$(PY) -m pytest -q $(ARGS); rc=$$?; [ $$rc -eq 5 ] && echo 'no tests collected' && rc=0; exit $$rc

lab: env
	$(VENV)/bin/jupyter lab notebooks

lint: env
	$(VENV)/bin/ruff check kit tests bench

bench: env
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
