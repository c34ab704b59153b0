# Set-up and everyday commands. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# The CPU demo: a ResNet-18 DSP model trained from scratch on the synthetic dataset.
DEMO_DATA ?= data/synthetic
DEMO_LOGS ?= logs/demo
DEMO_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 128 --width 64 \
	-b 32 -j 2 --epochs 15 --step-size 10 --lr 0.05 --eval-freq 5 --combine-trainval

.PHONY: venv test demo

venv: $(INSTALLED)

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

demo: $(INSTALLED)
	$(PY) main.py $(DEMO_ARGS) --logs-dir $(DEMO_LOGS)

include ablation.mk
