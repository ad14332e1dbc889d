# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Both create and use a local virtualenv (.venv) themselves.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := build/demo

# ONNX Runtime's telemetry, pip's cache and every temp file go to a scratch folder
# outside the user's home and the source tree.
SCRATCH ?= $(or $(TMPDIR),/tmp)/trtforge-scratch
export XDG_CACHE_HOME := $(SCRATCH)/cache
export TMPDIR         := $(SCRATCH)/tmp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@mkdir -p $(XDG_CACHE_HOME) $(TMPDIR)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# [torch] is exactly torch 2.13.0, the CPU wheel (newer torch pulls GBs of CUDA packages);
	# [ray] runs `trtforge matrix` on an embedded local Ray.
	$(BIN)/python -m pip install -q -e ".[rtx,dev,torch,ray]"
	# The sample model ships inside this package. --no-deps: we only need its model
	# files, and its dependencies would pull opencv and pin the CPU onnxruntime.
	$(BIN)/python -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4"
	# MTCNN's weights for the export sample; --no-deps: it pins an old torch and numpy.
	$(BIN)/python -m pip install -q --no-deps "facenet-pytorch==2.6.0"
	@touch $(STAMP)

# The main job on the bundled sample: PP-OCRv4 text recognizer -> passes -> INT8 QDQ
# -> TensorRT-RTX engine -> validation against FP32 -> report, all under build/demo/.
demo: $(STAMP)
	@mkdir -p $(XDG_CACHE_HOME) $(TMPDIR)
	$(BIN)/python -m samples.ppocr_rec.prepare --out $(DEMO)
	$(BIN)/trtforge optimize $(DEMO)/ppocr_rec.onnx -o $(DEMO)/out --recipe samples/ppocr_rec/recipe.yaml \
	    --calib $(DEMO)/data/calib --val $(DEMO)/data/val
	# The same model in the Q/DQ form ONNX Runtime's CPU kernels run fast (CPU speed-up measured here).
	$(BIN)/trtforge optimize $(DEMO)/ppocr_rec.onnx -o $(DEMO)/out-cpu --recipe samples/ppocr_rec/recipe-cpu.yaml \
	    --calib $(DEMO)/data/calib --val $(DEMO)/data/val

test: $(STAMP)
	@mkdir -p $(XDG_CACHE_HOME) $(TMPDIR)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@mkdir -p $(XDG_CACHE_HOME) $(TMPDIR)
	$(BIN)/python -m pip install -q -e ".[rtx,dev,bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf build $(SCRATCH)
