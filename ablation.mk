# The paper's ablation (PCB baseline, +DSA, +DS, full DSP), one run per row, then its table (reid.report).
# Included by the Makefile, which defines PY, INSTALLED and DEMO_DATA.
#   make ablation-market     Market-1501 from $(MARKET_DIR), the paper's settings (GPU)
#   make ablation-duke       DukeMTMC-reID from $(DUKE_DIR), the paper's settings (GPU)
#   make ablation-synthetic  the CPU demo's settings on the synthetic dataset
# RECIPE=strong trains the four rows with the strong-baseline recipe (docs/recipes.md) into
# logs/ablation-<set>-strong/, then writes logs/ablation-<set>-recipes.md: both recipes' rows in one table.
# A row whose logs/ablation-<set>/<row>/results.json exists is not trained again; delete it to redo the row.
# Extra main.py flags for every row: make ablation-market ABLATION_EXTRA="--amp"
# SEEDS="1 2 3" trains each row once per seed, into logs/ablation-<set>/<row>-seed<N>/ with --seed N; the table
# then has one row per ablation row (mean ± std over the seeds) and each row's difference from the baseline with
# its bootstrap interval (docs/statistics.md). The runs are independent targets: make -j2 trains two at a time.
MARKET_DIR ?= data/Market-1501
DUKE_DIR ?= data/DukeMTMC-reID
DEMO_DATA ?= data/synthetic
ABLATION_EXTRA ?=
SEEDS ?=
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
# The synthetic rows: the paper's recipe at the demo's 96x48 for 12 epochs (lr x0.1 after 8). Until 2026-12-04
# these rows trained at 128x64 (one seed each); the 96x48 rows with 3 seeds are the ones docs/results.md reports.
SYNTHETIC_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 96 --width 48 \
	-b 32 -j 2 --epochs 12 --step-size 8 --lr 0.05 --eval-freq 4 --combine-trainval --flip-test
ABLATION_DATA_synthetic = $(SYNTHETIC_ARGS)

# The strong recipe: BoT's settings on the real datasets (120 epochs, P x K = 16 x 4 with the default -b 64). On
# the synthetic set, the paper rows' data, model, input size and length (12 epochs, lr x0.1 at epoch 8) with a
# 1-epoch warm-up, so that only the recipe's other settings differ from the paper row (until 2026-12-04: 128x64).
STRONG_ARGS := -j 4 --combine-trainval --recipe strong
SYNTHETIC_STRONG_ARGS ?= -d synthetic --data-dir $(DEMO_DATA) -a resnet18 --no-pretrained --height 96 --width 48 \
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
# The run folders of a set: one per row, or with SEEDS one per row and seed ("baseline-seed2").
ABLATION_RUNS := $(if $(strip $(SEEDS)),$(foreach row,$(ABLATION_ROWS),$(foreach seed,$(SEEDS),$(row)-seed$(seed))),\
	$(ABLATION_ROWS))
# The report of the runs in $(1), also written to the file $(2); with SEEDS, with the differences from the baseline.
ablation_report = $(strip $(PY) -m reid.report $(1) $(if $(strip $(SEEDS)),--versus-baseline) --out $(2))

.PHONY: ablation-market ablation-duke ablation-synthetic

ablation-market ablation-duke ablation-synthetic: ablation-%: \
		$(foreach run,$(ABLATION_RUNS),logs/ablation-%$(RECIPE_SUFFIX)/$(run)/results.json)
	$(call ablation_report,logs/ablation-$*$(RECIPE_SUFFIX),logs/ablation-$*$(RECIPE_SUFFIX)/table.md)
	$(if $(RECIPE_SUFFIX),$(call ablation_report,logs/ablation-$* logs/ablation-$*$(RECIPE_SUFFIX),\
		logs/ablation-$*-recipes.md))

# One training run. The stem is "<set>/<run>", e.g. "market/dsa", "market-strong/dsa" or "market/dsa-seed2";
# the venv is order-only so that re-installing it does not redo finished runs.
ABLATION_SET = $(patsubst %/,%,$(dir $*))
ABLATION_ROW = $(firstword $(subst -seed, ,$(notdir $*)))
ABLATION_SEED = $(word 2,$(subst -seed, ,$(notdir $*)))
ABLATION_FLAGS = $(strip $(ABLATION_DATA_$(ABLATION_SET)) $(ABLATION_SWITCHES_$(ABLATION_ROW)) $(ABLATION_EXTRA) \
	$(if $(ABLATION_SEED),--seed $(ABLATION_SEED)))
logs/ablation-%/results.json: | $(INSTALLED)
	$(PY) main.py $(ABLATION_FLAGS) --logs-dir $(@D)

# The synthetic runs read the generated dataset: it is generated once, before them, so that runs started in
# parallel (make -j2) do not each start generating it.
$(foreach set,synthetic synthetic-strong,$(foreach run,$(ABLATION_RUNS),logs/ablation-$(set)/$(run)/results.json)): \
		| $(DEMO_DATA)
$(DEMO_DATA): | $(INSTALLED)
	$(PY) -m reid.datasets.synthetic $(DEMO_DATA)
