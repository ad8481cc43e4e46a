# imagesim: `make demo` and `make test` set everything up on a fresh Debian machine (as root):
# system packages, the Python venv (.venv), the release build of the Rust extension.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
STAMP := .stamp
DEMO  ?= demo-out
APT_PACKAGES := gdal-bin libgdal-dev cmake nasm pkg-config chromium chromium-driver wrk
# The shared real-data corpus (TIFF/COG variants, corrupt files, OSM): tests skip visibly without it.
IMAGESIM_REALDATA ?= $(firstword $(abspath $(wildcard ../shared/realdata ../../shared/realdata /work/shared/realdata)))
export IMAGESIM_REALDATA
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.PHONY: all setup build demo test lint lint-python lint-rust test-rust test-python bench bench-chip bench-nodata bench-labels bench-encode bench-index bench-tiles bench-storage bench-stac bench-masks bench-partial bench-change bench-pretrain bench-footprints bench-train stubtest clean

all: build

$(STAMP):
	mkdir -p $(STAMP)

# System packages: GDAL (sample data, parity tests), cmake + nasm (libjpeg-turbo with SIMD),
# chromium + chromium-driver (the viewer's browser test), wrk (tile-server benchmark).
$(STAMP)/apt: | $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs"; exit 1; }
	touch $@

$(STAMP)/venv: $(STAMP)/apt pyproject.toml | $(STAMP)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q numpy setuptools wheel "maturin>=1.5,<2"
	# GDAL's bindings must match the system libgdal and be built with numpy present.
	$(PY) -c "import osgeo.gdal_array" 2>/dev/null || \
	  $(PIP) install -q --no-build-isolation "gdal==$$(gdal-config --version)"
	touch $@

$(STAMP)/build: $(STAMP)/venv $(RUST_SOURCES) | $(STAMP)
	# The package and its extras (tests, benchmark baseline, training) come from pyproject.toml.
	source $(VENV)/bin/activate && maturin develop --release -q --extras test,bench,train,encode,index,serve,cluster,stac
	touch $@

setup: $(STAMP)/build
build: $(STAMP)/build

demo: $(STAMP)/build
	$(VENV)/bin/imagesim sample-data $(DEMO)/sample --seed 0 $(if $(SMALL),--small,) --overwrite
	$(VENV)/bin/imagesim chip --ard-path $(DEMO)/sample/ard --dest $(DEMO)/chips --zoom 17
	$(VENV)/bin/imagesim nodata-index --chips $(DEMO)/chips --source pixels --nodata-threshold 4
	$(VENV)/bin/imagesim osm import $(DEMO)/sample/sample.osm.pbf --ard-path $(DEMO)/sample/ard --overwrite
	$(VENV)/bin/imagesim osm tags --ard-path $(DEMO)/sample/ard --top 12
	$(VENV)/bin/imagesim labels build --ard-path $(DEMO)/sample/ard --chips $(DEMO)/chips --include partial --overwrite
	$(VENV)/bin/imagesim labels split --chips $(DEMO)/chips --val-fraction 0.2 --seed 0 --group-level 14
	$(VENV)/bin/imagesim labels report --chips $(DEMO)/chips
	$(VENV)/bin/imagesim train --chips $(DEMO)/chips --out $(DEMO)/run --backbone resnet18 --chip-size 64 --epochs 4 --batch-size 32 --lr 2e-3 --overwrite
	$(VENV)/bin/imagesim export --model $(DEMO)/run/model.pt --out $(DEMO)/run/model.onnx --overwrite
	$(VENV)/bin/imagesim encode --onnx $(DEMO)/run/model.onnx --chips $(DEMO)/chips --overwrite
	$(VENV)/bin/imagesim index --embeddings $(DEMO)/chips/embeddings.parquet --out $(DEMO)/index --overwrite
	$(VENV)/bin/imagesim similar --evaluate --labels $(DEMO)/chips/labels.parquet --index $(DEMO)/index
	$(VENV)/bin/imagesim change --chips $(DEMO)/chips --embeddings $(DEMO)/chips/embeddings.parquet --geojson $(DEMO)/changes.geojson --truth $(DEMO)/sample/changes-truth.geojson --top 10 --overwrite
	$(VENV)/bin/imagesim similar $$($(PY) -c "import polars as pl; print(pl.read_parquet('$(DEMO)/index/ids.parquet')['chip'][0])") --index $(DEMO)/index --k 5 --geojson $(DEMO)/similar.geojson
	@echo
	@echo "Sample ARD delivery:  $(DEMO)/sample/ard"
	@echo "OpenStreetMap data:   $(DEMO)/sample/sample.osm.pbf"
	@echo "Chips:                $(DEMO)/chips/<zone>/*.jpg"
	@echo "Chip manifest:        $(DEMO)/chips/chips.parquet"
	@echo "No-data index:        $(DEMO)/chips/nodata-index.json (+ nodata.parquet)"
	@echo "OSM per cell:         $(DEMO)/sample/ard/<zone>/<qk12>/osm_data.json (+ osm_tags.parquet)"
	@echo "Labels:               $(DEMO)/chips/labels.parquet (+ labels.csv, labels.json, labels-train/val.csv)"
	@echo "Label report:         $(DEMO)/chips/labels-report/report.md (+ PNG figures)"
	@echo "Model:                $(DEMO)/run/model.pt (+ metrics.json, training_curves.png), ONNX: $(DEMO)/run/model.onnx"
	@echo "Embeddings:           $(DEMO)/chips/embeddings.parquet (+ embeddings.json)"
	@echo "Index:                $(DEMO)/index (index.faiss, ids.parquet, index.json); similar chips: $(DEMO)/similar.geojson"
	@echo "Changes:              $(DEMO)/chips/changes.parquet (+ changes.json); top changes: $(DEMO)/changes.geojson; planted: $(DEMO)/sample/changes-truth.geojson"
	@echo "Viewer:               $(VENV)/bin/imagesim serve --ard-path $(DEMO)/sample/ard --chips $(DEMO)/chips --index $(DEMO)/index --changes $(DEMO)/chips/changes.parquet  -> http://127.0.0.1:8000/"

test: $(STAMP)/build lint test-rust test-python stubtest

# Habits checked on every `make test`: ruff (lint + format), mypy, cargo fmt, clippy.
lint: lint-python lint-rust

lint-python: $(STAMP)/build
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/python -m mypy

lint-rust: $(STAMP)/apt
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -q -- -D warnings

test-rust: $(STAMP)/apt
	cargo test -p imagesim-core -q

test-python: $(STAMP)/build
	$(PY) -m pytest -q tests

stubtest: $(STAMP)/build
	$(VENV)/bin/python -m mypy.stubtest imagesim._imagesim --allowlist tests/stubtest-allowlist.txt

BENCHES := chip nodata labels encode index tiles storage stac masks partial change pretrain memory memory_downstream index_scale startup manifest footprints train
bench: $(addprefix bench-,$(BENCHES))
# bench-chip runs benches/bench_chip.py, and so on.
$(addprefix bench-,$(BENCHES)): bench-%: $(STAMP)/build
	$(PY) benches/bench_$*.py

clean:
	rm -rf $(STAMP) target $(DEMO)
