# Convenience front end over CMake. `make run` and `make test` are the README's two
# commands: they install missing Debian packages, build, and run.
BUILD ?= build
JOBS ?= $(shell nproc)
FIXTURES := $(BUILD)/fixtures
PY := /usr/bin/python3

.PHONY: all deps build fixtures run model test bench clean

all: build

deps:
	@bash tools/install_deps.sh

build: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

# PyTorch reference fixtures for the conformance tests (regenerated when the script changes).
$(FIXTURES)/.stamp: tools/make_fixtures.py tools/safetensors_io.py tools/isplit_reference.py \
                    tools/make_analysis_fixtures.py tools/make_train_fixtures.py
	$(PY) tools/make_fixtures.py --out $(FIXTURES)
	$(PY) tools/make_analysis_fixtures.py --out $(FIXTURES)
	$(PY) tools/make_train_fixtures.py --fixtures $(FIXTURES)
	touch $@

fixtures: deps $(FIXTURES)/.stamp

# The main job on its built-in default: a ResNet-50 trained on Fashion-MNIST (Debian's
# dataset-fashion-mnist) by the documented recipe (docs/training.md), its cut points at the
# training input size, its test accuracy, and the I-SPLIT analysis of 1000 test images
# into $(BUILD)/analysis. The model is trained on the first run (hours on two cores, with
# progress) and kept in $(MODELS); an interrupted run resumes where it stopped.
MODELS ?= trained
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FMNIST := $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz
RESNET_FM := $(MODELS)/resnet50-fashion-mnist.safetensors
RESNET_FM_RECIPE := --model resnet50 --data $(FMNIST_DIR) --val $(FMNIST_DIR) --input-size 32 \
  --epochs 12 --batch-size 64 --optimizer sgd --lr 0.05 --momentum 0.9 --nesterov \
  --weight-decay 5e-4 --schedule cosine --warmup 1 --pad 2 --hflip --seed 1 \
  --checkpoint-steps 200

run: build $(RESNET_FM).done
	$(BUILD)/isplit info --model resnet50 --input-size 32 --num-classes 10
	$(BUILD)/isplit eval --model resnet50 --weights $(RESNET_FM) --data $(FMNIST_DIR) --input-size 32
	$(BUILD)/isplit analyze --model resnet50 --weights $(RESNET_FM) --data $(FMNIST) \
	  --input-size 32 --limit 1000 --out $(BUILD)/analysis

# Trains (or resumes) the main job's model; the stamp marks a finished training.
model: build $(RESNET_FM).done

$(RESNET_FM).done: | build
	mkdir -p $(MODELS)
	$(BUILD)/isplit train $(RESNET_FM_RECIPE) --out $(RESNET_FM) --resume
	touch $@

test: build fixtures
	cd $(BUILD) && ctest --output-on-failure

bench: build
	$(BUILD)/isplit_bench

clean:
	rm -rf $(BUILD)
