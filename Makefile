# The two set-up commands are `make serve` and `make test`; both create or refresh .venv
# first and do nothing more when pyproject.toml and constraints.txt are unchanged.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install -q -c constraints.txt
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: venv serve test lint bench bench-ingest bench-model bench-results bench-segment bench-keyimages bench-e2e bench-scale demo demo-weights view check-config docs clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q -U pip wheel setuptools
	$(PIP) -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

serve: venv
	$(VENV)/bin/dsm-node serve $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff on the whole tree, mypy (strict) on the packages listed in pyproject.toml [tool.mypy]
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check-config: venv
	$(VENV)/bin/dsm-node check-config $(ARGS)

docs: venv
	$(PY) -m dsm_node.config_doc --write

bench: bench-ingest bench-model bench-results

bench-ingest: venv
	$(PY) bench/ingest.py $(ARGS)

bench-model: venv
	$(PY) bench/model.py $(ARGS)

bench-results: venv
	$(PY) bench/results.py $(ARGS)

# The one inference path on a 512x512x300 CT: paper config (random weights) vs the demo weights.
# The paper config runs by default only with CUDA; on CPU: ARGS="--configs paper,small --shape 96 96 48"
bench-segment: venv
	$(PY) bench/segment.py $(ARGS)

bench-keyimages: venv
	$(PY) bench/keyimages.py $(ARGS)

bench-e2e: venv
	$(PY) bench/e2e.py $(ARGS)

# Peak RSS and stage times of `dsm-node infer` on 150..1000-slice studies:  make bench-scale ARGS="--slices 150,600"
bench-scale: venv
	$(PY) bench/scale.py $(ARGS)

# Node on embedded defaults + a local receiver; sends the real CT of ../shared/data/01 when
# present (else a phantom study), prints segments/volumes/timings, leaves PNGs in var/demo.
demo: venv
	$(VENV)/bin/dsm-node demo $(ARGS)

# Reproduces weights/dsm-small-demo.pt (dsm-small-demo-0.7.1: 0.7's weights, calibrated with the
# per-organ zero-shot thresholds, which the end-of-training calibration now measures): Stage 2 of the whole network
# (480 steps, config/train_stage2_whole_small.yaml) from the organ side of the previous demo
# weights 0.6 (taken from git history; 0.6's own recipe is in the git history of this file,
# commit 57f6628), exported with the datasets that trained the lineage (phantoms: the file
# records its labelled classes) to model/weights/ (which weights/ links to: the export replaces
# the file, so it must not write through the link), and evaluated on held-out phantoms and on the
# real CTs of ../shared/data. About 90 minutes on 2 CPU cores; set DEMO_BUDGET (minutes) to cut
# Stage 2 to a time budget instead. Loader workers and threads do not change the result:
#   make demo-weights DEMO_SET="data.num_workers=12 run.threads=8"
DEMO_BUDGET ?=
runs/dsm-small-demo-0.6.pt:
	@mkdir -p runs
	git show 57f6628:model/weights/dsm-small-demo.pt > $@ || { rm -f $@; echo "needs the git history (commit 57f6628) for the 0.6 weights"; exit 1; }

demo-weights: venv runs/dsm-small-demo-0.6.pt
	$(VENV)/bin/dsm-train stage2 --config config/train_stage2_whole_small.yaml --resume none $(if $(DEMO_BUDGET),--time-budget $(DEMO_BUDGET)) $(if $(DEMO_SET),--set $(DEMO_SET))
	$(VENV)/bin/dsm-train export --checkpoint runs/demo_stage2_whole/final.pt --out model/weights/dsm-small-demo.pt --version dsm-small-demo-0.7.1 --labelled-datasets phantom_organs,phantom_seen
	$(VENV)/bin/dsm-train eval --checkpoint weights/dsm-small-demo.pt --data phantom:5000:8 --out runs/demo_eval
	$(VENV)/bin/dsm-train eval --checkpoint weights/dsm-small-demo.pt --data real --out runs/demo_eval_real

# OHIF + Orthanc on 127.0.0.1 with the given DICOM files/folders (first run: scripts/install-viewer.sh).
view: venv
	scripts/install-viewer.sh
	$(VENV)/bin/dsm-node view $(ARGS)

clean:
	rm -rf var .pytest_cache
