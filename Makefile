# The README's two commands: `make demo` and `make test`. Both install what is missing first.
SWIFT ?= swift
APT_PACKAGES := libopenblas-dev zlib1g-dev libjson-c-dev
DEMO_SRC := fixtures/llama-gqa-sharded
DEMO_DST := out/demo-llama-vffn

.PHONY: all deps build test demo fixtures clean

all: build

# Installs the C libraries through apt, only those not yet installed.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build -c release --product vffn-convert

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

# Converts the shipped tiny Llama (GQA, 4 shards), then verifies the result against it.
demo: build
	@mkdir -p out
	./.build/release/vffn-convert convert $(DEMO_SRC) $(DEMO_DST) --experts 8 --top-k 2 --max-depth 4 --force
	./.build/release/vffn-convert verify $(DEMO_DST) --source $(DEMO_SRC)

# Regenerates fixtures/ (needs torch and transformers; see fixtures/generate.py).
fixtures:
	python3 fixtures/generate.py
	$(SWIFT) build --product vffn-convert
	python3 fixtures/generate.py --swift-converted .build/debug/vffn-convert

clean:
	rm -rf .build out
