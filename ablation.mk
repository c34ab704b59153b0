# The paper's ablation (PCB baseline, +DSA, +DS, full DSP), one run per row, then its table (reid.report).
# Included by the Makefile, which defines PY, INSTALLED and DEMO_ARGS.
#   make ablation-market     Market-1501 from $(MARKET_DIR), the paper's settings (GPU)
#   make ablation-duke       DukeMTMC-reID from $(DUKE_DIR), the paper's settings (GPU)
#   make ablation-synthetic  the CPU demo's settings on the synthetic dataset
# A row whose logs/ablation-<set>/<row>/results.json exists is not trained again; delete it to redo the row.
# Extra main.py flags for every row: make ablation-market ABLATION_EXTRA="--amp"
MARKET_DIR ?= data/Market-1501
DUKE_DIR ?= data/DukeMTMC-reID
ABLATION_EXTRA ?=

PAPER_ARGS := -b 48 -j 4 --epochs 50 --combine-trainval --step-size 40
ABLATION_DATA_market = -d market --data-dir $(MARKET_DIR) $(PAPER_ARGS)
ABLATION_DATA_duke = -d duke --data-dir $(DUKE_DIR) $(PAPER_ARGS)
ABLATION_DATA_synthetic = $(DEMO_ARGS)

ABLATION_ROWS := baseline dsa ds full
ABLATION_SWITCHES_baseline := --no-dsa --no-deep-supervision
ABLATION_SWITCHES_dsa := --no-deep-supervision
ABLATION_SWITCHES_ds := --no-dsa
ABLATION_SWITCHES_full :=

.PHONY: ablation-market ablation-duke ablation-synthetic

ablation-market ablation-duke ablation-synthetic: ablation-%: \
		$(foreach row,$(ABLATION_ROWS),logs/ablation-%/$(row)/results.json)
	$(PY) -m reid.report logs/ablation-$* --out logs/ablation-$*/table.md

# One training run. The stem is "<set>/<row>", e.g. "market/dsa"; the venv is order-only so that
# re-installing it does not redo finished runs.
ABLATION_SET = $(patsubst %/,%,$(dir $*))
ABLATION_ROW = $(notdir $*)
ABLATION_FLAGS = $(strip $(ABLATION_DATA_$(ABLATION_SET)) $(ABLATION_SWITCHES_$(ABLATION_ROW)) $(ABLATION_EXTRA))
logs/ablation-%/results.json: | $(INSTALLED)
	$(PY) main.py $(ABLATION_FLAGS) --logs-dir $(@D)
