# Set-up and everyday commands. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# The CPU demo: a ResNet-18 DSP model trained from scratch on the synthetic dataset, in under 5 minutes on 2
# cores: 96x48 input, 10 epochs with a 1-epoch warm-up and a cosine schedule, label smoothing, evaluated with the
# flip test and re-ranking (docs/results.md has the figures and the settings that were compared).
DEMO_DATA ?= data/synthetic
DEMO_LOGS ?= logs/demo
DEMO_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 96 --width 48 \
	-b 32 -j 2 --epochs 10 --warmup-epochs 1 --lr-schedule cosine --label-smoothing 0.1 --lr 0.05 \
	--eval-freq 10 --combine-trainval --flip-test --rerank

.PHONY: venv test demo sample-features

venv: $(INSTALLED)

$(INSTALLED): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

# A second `make demo` continues the first run (a finished one is evaluated again) instead of replacing it.
DEMO_RESUME = $(if $(wildcard $(DEMO_LOGS)/checkpoint.pth.tar),--resume $(DEMO_LOGS)/checkpoint.pth.tar)

demo: $(INSTALLED)
	$(PY) main.py $(DEMO_ARGS) --logs-dir $(DEMO_LOGS) $(DEMO_RESUME)

# sample_features/: the feature tools' outputs for the demo model on two synthetic query images (listed in its
# README.md). The demo is trained first when its model_best.pth.tar is missing. The --compare baseline is the
# ablation's baseline row when logs/ablation-synthetic/baseline has been trained, else an untrained ResNet-18.
SAMPLE_DIR ?= sample_features
SAMPLE_IMAGE ?= 0101_c3s1_000025_01
SAMPLE_COMPARE_IMAGE ?= 0150_c3s1_000025_01
SAMPLE_BASELINE ?= logs/ablation-synthetic/baseline/model_best.pth.tar
SAMPLE_EVAL ?= logs/demo-visrank
SAMPLE_DPI ?= 72
DEMO_BEST := $(DEMO_LOGS)/model_best.pth.tar
SAMPLE_QUERY = $(DEMO_DATA)/query
SAMPLE_BASELINE_FLAG = $(if $(wildcard $(SAMPLE_BASELINE)),--checkpoint $(SAMPLE_BASELINE))

sample-features: $(DEMO_BEST) | $(INSTALLED)
	mkdir -p $(SAMPLE_DIR)
	rm -f $(SAMPLE_DIR)/*.npy $(SAMPLE_DIR)/*.png
	$(PY) single_images_features_3.py --checkpoint $(DEMO_BEST) --image $(SAMPLE_QUERY)/$(SAMPLE_IMAGE).jpg \
		--layers layer1 layer2 dsa1 --dpi $(SAMPLE_DPI) --out $(SAMPLE_DIR)
	$(PY) single_images_features_3.py --compare $(DEMO_BEST) --image $(SAMPLE_QUERY)/$(SAMPLE_COMPARE_IMAGE).jpg \
		--layers layer1 layer2 --dpi $(SAMPLE_DPI) --out $(SAMPLE_DIR) $(SAMPLE_BASELINE_FLAG)
	$(PY) single_features_cam.py --checkpoint $(DEMO_BEST) --image $(SAMPLE_QUERY)/$(SAMPLE_IMAGE).jpg \
		--dpi $(SAMPLE_DPI) --out $(SAMPLE_DIR)
	$(PY) single_features_cam.py --checkpoint $(DEMO_BEST) --image $(SAMPLE_QUERY)/$(SAMPLE_COMPARE_IMAGE).jpg \
		--dpi $(SAMPLE_DPI) --out $(SAMPLE_DIR)
	rm -rf $(SAMPLE_EVAL)/visrank
	$(PY) main.py $(DEMO_ARGS) --evaluate --resume $(DEMO_BEST) --visrank 5 --logs-dir $(SAMPLE_EVAL) --overwrite
	for figure in $$(ls $(SAMPLE_EVAL)/visrank/*.png | head -n 2); do \
		cp $$figure $(SAMPLE_DIR)/ranklist_$$(basename $$figure) || exit 1; done
	cp $(DEMO_LOGS)/curves.png $(SAMPLE_DIR)/demo_curves.png

$(DEMO_BEST): | $(INSTALLED)
	$(PY) main.py $(DEMO_ARGS) --logs-dir $(DEMO_LOGS)

include ablation.mk
