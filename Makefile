# Two commands do all set-up:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean slicer-envs

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from the local wheel first, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,train]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PYTHONUTF8=1 VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow $(VENV)/bin/sculptorgan demo --out demo_output

test: $(STAMP)
	PYTHONUTF8=1 VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow $(PY) -m pytest -q Testing

# Python 3.9 (Slicer 5.8) compile + unit tests, and the worker with only Slicer's packages + the installer's list.
slicer-envs:
	bash Testing/slicer_envs.sh all

clean:
	rm -rf $(VENV) demo_output
