# Convenience front end over CMake. `make run` and `make test` are the README's two
# commands: they install missing Debian packages, build, and run.
BUILD ?= build
JOBS ?= $(shell nproc)
FIXTURES := $(BUILD)/fixtures
PY := /usr/bin/python3

.PHONY: all deps build fixtures run test bench clean

all: build

deps:
	@bash tools/install_deps.sh

build: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

# PyTorch reference fixtures for the conformance tests (regenerated when the script changes).
$(FIXTURES)/.stamp: tools/make_fixtures.py tools/safetensors_io.py tools/isplit_reference.py \
                    tools/make_analysis_fixtures.py
	$(PY) tools/make_fixtures.py --out $(FIXTURES)
	$(PY) tools/make_analysis_fixtures.py --out $(FIXTURES)
	touch $@

fixtures: deps $(FIXTURES)/.stamp

# The main job on its built-in default: ResNet-50's cut points, a prediction on the bundled
# sample image, and the I-SPLIT analysis of Fashion-MNIST's test images (Debian's
# dataset-fashion-mnist) into $(BUILD)/analysis. Weights: seeded, exported by torchvision's
# own code, until trained weights exist.
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
run: build $(BUILD)/demo/resnet50.safetensors
	$(BUILD)/isplit info --model resnet50
	$(BUILD)/isplit predict --model resnet50 --weights $(BUILD)/demo/resnet50.safetensors \
	  data/sample/sample.png
	$(BUILD)/isplit analyze --model resnet50 --weights $(BUILD)/demo/resnet50.safetensors \
	  --data $(FMNIST) --input-size 64 --limit 500 --out $(BUILD)/analysis

$(BUILD)/demo/resnet50.safetensors: tools/export_torchvision.py
	mkdir -p $(BUILD)/demo
	$(PY) tools/export_torchvision.py --model resnet50 --seed 1 --out $@

test: build fixtures
	cd $(BUILD) && ctest --output-on-failure

bench: build
	$(BUILD)/isplit_bench

clean:
	rm -rf $(BUILD)
