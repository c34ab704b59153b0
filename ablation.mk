# The paper's ablation (PCB baseline, +DSA, +DS, full DSP), one run per row, then its table (reid.report).
# Included by the Makefile, which defines PY, INSTALLED and DEMO_DATA.
#   make ablation-market     Market-1501 from $(MARKET_DIR), the paper's settings (GPU)
#   make ablation-duke       DukeMTMC-reID from $(DUKE_DIR), the paper's settings (GPU)
#   make ablation-synthetic  the CPU demo's settings on the synthetic dataset
# RECIPE=strong trains the four rows with the strong-baseline recipe (docs/recipes.md) into
# logs/ablation-<set>-strong/, then writes logs/ablation-<set>-recipes.md: both recipes' rows in one table.
# A row whose logs/ablation-<set>/<row>/results.json exists is not trained again; delete it to redo the row.
# Extra main.py flags for every row: make ablation-market ABLATION_EXTRA="--amp"
MARKET_DIR ?= data/Market-1501
DUKE_DIR ?= data/DukeMTMC-reID
DEMO_DATA ?= data/synthetic
ABLATION_EXTRA ?=
RECIPE ?= paper
ifeq ($(filter $(RECIPE),paper strong),)
$(error RECIPE=$(RECIPE) is not a recipe: choose paper or strong)
endif
RECIPE_SUFFIX_paper :=
RECIPE_SUFFIX_strong := -strong
RECIPE_SUFFIX := $(RECIPE_SUFFIX_$(RECIPE))

PAPER_ARGS := -b 48 -j 4 --epochs 50 --combine-trainval --step-size 40
ABLATION_DATA_market = -d market --data-dir $(MARKET_DIR) $(PAPER_ARGS)
ABLATION_DATA_duke = -d duke --data-dir $(DUKE_DIR) $(PAPER_ARGS)
# The synthetic rows: the paper's recipe at 128x64 for 12 epochs (lr x0.1 after 8), the demo's settings until
# 2026-11-25, with which the README's table was measured.
SYNTHETIC_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 128 --width 64 \
	-b 32 -j 2 --epochs 12 --step-size 8 --lr 0.05 --eval-freq 4 --combine-trainval --flip-test
ABLATION_DATA_synthetic = $(SYNTHETIC_ARGS)

# The strong recipe: BoT's settings on the real datasets (120 epochs, P x K = 16 x 4 with the default -b 64). On
# the synthetic set, the demo's data, model and length (12 epochs, lr x0.1 at epoch 8) with a 1-epoch warm-up,
# so that only the recipe's other settings differ from the paper row.
STRONG_ARGS := -j 4 --combine-trainval --recipe strong
SYNTHETIC_STRONG_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 128 --width 64 \
	-b 32 -j 2 --eval-freq 4 --combine-trainval --flip-test --recipe strong --epochs 12 --milestones 8 \
	--warmup-epochs 1
ABLATION_DATA_market-strong = -d market --data-dir $(MARKET_DIR) $(STRONG_ARGS)
ABLATION_DATA_duke-strong = -d duke --data-dir $(DUKE_DIR) $(STRONG_ARGS)
ABLATION_DATA_synthetic-strong = $(SYNTHETIC_STRONG_ARGS)

ABLATION_ROWS := baseline dsa ds full
ABLATION_SWITCHES_baseline := --no-dsa --no-deep-supervision
ABLATION_SWITCHES_dsa := --no-deep-supervision
ABLATION_SWITCHES_ds := --no-dsa
ABLATION_SWITCHES_full :=

.PHONY: ablation-market ablation-duke ablation-synthetic

ablation-market ablation-duke ablation-synthetic: ablation-%: \
		$(foreach row,$(ABLATION_ROWS),logs/ablation-%$(RECIPE_SUFFIX)/$(row)/results.json)
	$(PY) -m reid.report logs/ablation-$*$(RECIPE_SUFFIX) --out logs/ablation-$*$(RECIPE_SUFFIX)/table.md
	$(if $(RECIPE_SUFFIX),$(PY) -m reid.report logs/ablation-$* logs/ablation-$*$(RECIPE_SUFFIX) \
		--out logs/ablation-$*-recipes.md)

# One training run. The stem is "<set>/<row>", e.g. "market/dsa" or "market-strong/dsa"; the venv is order-only
# so that re-installing it does not redo finished runs.
ABLATION_SET = $(patsubst %/,%,$(dir $*))
ABLATION_ROW = $(notdir $*)
ABLATION_FLAGS = $(strip $(ABLATION_DATA_$(ABLATION_SET)) $(ABLATION_SWITCHES_$(ABLATION_ROW)) $(ABLATION_EXTRA))
logs/ablation-%/results.json: | $(INSTALLED)
	$(PY) main.py $(ABLATION_FLAGS) --logs-dir $(@D)
