# All set-up on a fresh machine, then the job. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# A GUI needs a display; headless machines get the end-to-end demo.
XVFB := $(shell command -v xvfb-run 2>/dev/null)

.PHONY: run test test-slow setup sysdeps lint clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The GUI extra brings PyQt6 (the package itself forces no Qt binding).
# torch/torchvision pinned to the known-good pair in constraints.txt, so the project install cannot pull another build.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e ".[test,gui]"
	touch $(STAMP)

setup: $(STAMP) sysdeps

# Xvfb + Mesa GL + Qt xcb libraries for the GUI tests (napari needs a real OpenGL context).
sysdeps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxkbcommon-x11; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Xvfb, Mesa GL and Qt xcb libraries (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	      libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	      libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null; \
	  else echo "warning: xvfb-run missing and not root: GUI tests need Xvfb + Mesa (see README)"; fi; \
	fi

# The suite without the timing assertions (marker `slow`, see CONTRIBUTING.md); `make test-slow` runs those.
test: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -m "not slow"

test-slow: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -m slow

run: setup
	@if [ -n "$$DISPLAY" ] && $(PY) -c 'import napari_metalseg._widgets' 2>/dev/null; then \
	  $(VENV)/bin/metalseg gui; \
	else \
	  $(VENV)/bin/metalseg demo; \
	fi

lint: setup
	$(VENV)/bin/ruff check napari_metalseg tests benchmarks docs/screenshots.py
	$(VENV)/bin/ruff format --check napari_metalseg tests benchmarks docs/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
