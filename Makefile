# Convenience front end over CMake. `make run` and `make test` are the README's two
# commands: they install missing Debian packages, build, and run.
BUILD ?= build
JOBS ?= $(shell nproc)
FIXTURES := $(BUILD)/fixtures
PY := /usr/bin/python3

.PHONY: all deps build fixtures run model model-vgg16 test test-native bench clean test-aarch64 head-size

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
# Two stages (docs/training.md): 12 epochs from random weights, then a warm restart of
# 5 epochs from those weights with a fresh cosine schedule.
RESNET_FM1 := $(MODELS)/resnet50-fashion-mnist-stage1.safetensors
RESNET_FM1_RECIPE := --model resnet50 --data $(FMNIST_DIR) --val $(FMNIST_DIR) --input-size 32 \
  --epochs 12 --batch-size 64 --optimizer sgd --lr 0.02 --momentum 0.9 --nesterov \
  --weight-decay 5e-4 --schedule cosine --warmup 1 --pad 2 --hflip --seed 1 \
  --checkpoint-steps 200
RESNET_FM_RECIPE := --model resnet50 --data $(FMNIST_DIR) --val $(FMNIST_DIR) --input-size 32 \
  --weights $(RESNET_FM1) --epochs 5 --batch-size 64 --optimizer sgd --lr 0.01 --momentum 0.9 \
  --nesterov --weight-decay 5e-4 --schedule cosine --warmup 0.2 --pad 2 --hflip --seed 2 \
  --checkpoint-steps 200

run: build $(RESNET_FM).done
	$(BUILD)/isplit info --model resnet50 --input-size 32 --num-classes 10
	$(BUILD)/isplit eval --model resnet50 --weights $(RESNET_FM) --data $(FMNIST_DIR) --input-size 32
	$(BUILD)/isplit analyze --model resnet50 --weights $(RESNET_FM) --data $(FMNIST) \
	  --input-size 32 --limit 1000 --out $(BUILD)/analysis

# Trains (or resumes) the main job's model; the stamp marks a finished training.
model: build $(RESNET_FM).done

# VGG16 on Fashion-MNIST (docs/training.md): AdamW, since the network has no BatchNorm and
# SGD starts far slower from scratch (measured there). About 20 minutes per epoch here.
VGG_FM := $(MODELS)/vgg16-fashion-mnist.safetensors
VGG_FM_RECIPE := --model vgg16 --data $(FMNIST_DIR) --val $(FMNIST_DIR) --input-size 32 \
  --epochs 6 --batch-size 64 --optimizer adamw --lr 2e-4 --weight-decay 5e-4 \
  --schedule cosine --warmup 0.5 --pad 2 --hflip --seed 1 --checkpoint-steps 200

model-vgg16: build $(VGG_FM).done

$(VGG_FM).done: | build
	mkdir -p $(MODELS)
	$(BUILD)/isplit train $(VGG_FM_RECIPE) --out $(VGG_FM) --resume
	touch $@

$(RESNET_FM1).done: | build
	mkdir -p $(MODELS)
	$(BUILD)/isplit train $(RESNET_FM1_RECIPE) --out $(RESNET_FM1) --resume
	touch $@

$(RESNET_FM).done: $(RESNET_FM1).done | build
	$(BUILD)/isplit train $(RESNET_FM_RECIPE) --out $(RESNET_FM) --resume
	touch $@

# The README's test command: the native suites, then the AArch64 build under emulation.
test: test-native test-aarch64

test-native: build fixtures
	cd $(BUILD) && ctest --output-on-failure

# AArch64: cross build (cmake/aarch64-linux-gnu.cmake: static isplit and isplit_tests,
# libisplit_*.a) and a short run under qemu user-mode emulation on two CPU models: the unit
# tests that fit emulation (the NEON kernels against the scalar references among them),
# `isplit info`, and 32x32 runs on seeded weights whose outputs must equal the x86 build's:
# `isplit predict` logits, and the head-only program (head-size) up to a cut point and
# whole. docs/arm.md has the timings. Emulation is 10-50x slower than native, so the suites
# that run whole models (conformance*, models) and the slowest whole-model or statistics
# tests are left to the native run.
BUILD_ARM ?= build-aarch64
BUILD_HEAD ?= build-aarch64-head
QEMU_CPUS ?= cortex-a72 max
ARM_WEIGHTS := $(BUILD_ARM)/resnet50-seed1-c10.safetensors
ARM_IMAGES := data/sample/sample.png tests/data/small.png
ARM_TOL := 1e-5
ARM_TSE := conformance*,models
comma := ,
ARM_TCE := batch size*shards*,relu-grad pre*,report outputs,train: steady-state*,\
  train: dropout masks*,train: labels must fit*,grad: a small network*,grad: a smooth network*,\
  grad: MaxPool2d*,grad: Add (two inputs*,augment: offsets cover*,export_torchvision.py*,\
  every F16 and BF16 bit pattern*,tools/safetensors_io.py*,VGG16 packed for inference*

$(ARM_WEIGHTS): tools/export_torchvision.py tools/safetensors_io.py | deps
	mkdir -p $(BUILD_ARM)
	$(PY) tools/export_torchvision.py --model resnet50 --seed 1 --num-classes 10 --out $@

# The head-only build (ISPLIT_HEAD_ONLY) for AArch64, its program held to the size budget in
# cmake/head-size-budget.txt.
head-size: deps
	cmake -S . -B $(BUILD_HEAD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DISPLIT_HEAD_ONLY=ON
	cmake --build $(BUILD_HEAD) -j $(JOBS)
	bash tools/check_head_size.sh $(BUILD_HEAD)/isplit_capi_example aarch64-linux-gnu-strip \
	  cmake/head-size-budget.txt

test-aarch64: build head-size $(ARM_WEIGHTS)
	cmake -S . -B $(BUILD_ARM) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
	cmake --build $(BUILD_ARM) -j $(JOBS)
	$(BUILD)/isplit predict --model resnet50 --weights $(ARM_WEIGHTS) --input-size 32 \
	  --logits $(BUILD_ARM)/x86-logits.csv $(ARM_IMAGES) >/dev/null
	$(BUILD)/isplit_capi_example resnet50 $(ARM_WEIGHTS) layer2.0 32 - $(BUILD_ARM)/x86-head.f32 >/dev/null
	$(BUILD)/isplit_capi_example resnet50 $(ARM_WEIGHTS) - 32 - $(BUILD_ARM)/x86-whole.f32 >/dev/null
	@set -e; for cpu in $(QEMU_CPUS); do \
	  q="qemu-aarch64-static -cpu $$cpu"; \
	  t0=$$(date +%s); \
	  echo "== $$q: isplit_tests"; \
	  $$q $(BUILD_ARM)/isplit_tests --test-suite-exclude='$(ARM_TSE)' \
	    --test-case-exclude='$(subst $(comma) ,$(comma),$(ARM_TCE))'; \
	  t1=$$(date +%s); \
	  echo "== $$q: isplit info, predict and the head-only program against x86"; \
	  $$q $(BUILD_ARM)/isplit info --model resnet50 --input-size 32 >/dev/null; \
	  $$q $(BUILD_ARM)/isplit predict --model resnet50 --weights $(ARM_WEIGHTS) \
	    --input-size 32 --logits $(BUILD_ARM)/arm-logits.csv $(ARM_IMAGES) >/dev/null; \
	  $(PY) tools/compare_logits.py $(BUILD_ARM)/arm-logits.csv $(BUILD_ARM)/x86-logits.csv $(ARM_TOL); \
	  $$q $(BUILD_HEAD)/isplit_capi_example resnet50 $(ARM_WEIGHTS) layer2.0 32 - \
	    $(BUILD_ARM)/arm-head.f32 >/dev/null; \
	  $(PY) tools/compare_f32.py $(BUILD_ARM)/arm-head.f32 $(BUILD_ARM)/x86-head.f32 $(ARM_TOL) \
	    "head to layer2.0"; \
	  $$q $(BUILD_HEAD)/isplit_capi_example resnet50 $(ARM_WEIGHTS) - 32 - \
	    $(BUILD_ARM)/arm-whole.f32 >/dev/null; \
	  $(PY) tools/compare_f32.py $(BUILD_ARM)/arm-whole.f32 $(BUILD_ARM)/x86-whole.f32 $(ARM_TOL) \
	    "whole network"; \
	  t2=$$(date +%s); \
	  echo "== $$q: tests $$((t1 - t0)) s, programs $$((t2 - t1)) s"; \
	done

bench: build
	$(BUILD)/isplit_bench

clean:
	rm -rf $(BUILD)
