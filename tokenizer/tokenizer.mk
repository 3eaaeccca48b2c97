# ----------------------------------------------------------------------------
# tokenizer/ — GPT-2 byte-level BPE, included by the top Makefile.
#   tokenizer/tok                  the command-line tool
#   $(CPU)/test/test_tokenizer   doctest tests (in TEST_BINS_CPU, run from the repo root)
#   make test-tokenizer            build and run those tests
#   make bench-tokenizer           dev/bench_tokenizer: MB/s vs tiktoken (needs: pip install tiktoken)
#   make fuzz                      libFuzzer targets, each run TOK_FUZZ_SECONDS (default 60) one after another
# Debian packages: nlohmann-json3-dev doctest-dev; for `make fuzz`: clang libclang-rt-14-dev
# The library (no main) is $(TOK_LIB_OBJS); link it with -lpthread.
# ----------------------------------------------------------------------------
TOK_CXXFLAGS  = $(CXXFLAGS) -O3
TOK_HEADERS  := tokenizer/bpe.h tokenizer/pretokenize.h tokenizer/unicode_tables.inc
TOK_LIB_OBJS := $(CPU)/tokenizer/bpe.o $(CPU)/tokenizer/unicode.o $(CPU)/tokenizer/train.o \
                $(CPU)/tokenizer/shard.o

$(CPU)/tokenizer/%.o: tokenizer/%.cpp $(TOK_HEADERS) $(CPU_FLAGS_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(TOK_CXXFLAGS) -c $< -o $@

$(PROG)tokenizer/tok: $(CPU)/tokenizer/tok.o $(TOK_LIB_OBJS)
	$(CXX) $(TOK_CXXFLAGS) $^ -o $@ $(LDLIBS_CPU)

$(CPU)/test/test_tokenizer: test/test_tokenizer.cpp $(TOK_LIB_OBJS) $(TOK_HEADERS) $(PROG)tokenizer/tok $(CPU_FLAGS_STAMP) \
                             | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -DGPTCU_PROGRAMS_DIR=\"$(PROGRAMS_DIR)\" -Itokenizer test/test_tokenizer.cpp $(TOK_LIB_OBJS) -o $@ $(LDLIBS_CPU)

TEST_BINS_CPU += $(CPU)/test/test_tokenizer

.PHONY: test-tokenizer bench-tokenizer fuzz fuzz-build-tokenizer
test-tokenizer: $(CPU)/test/test_tokenizer
	$(CPU)/test/test_tokenizer

# ---- benchmark (dev only) ----------------------------------------------------
$(CPU)/dev/bench_tokenizer: dev/bench_tokenizer.cpp $(TOK_LIB_OBJS) $(TOK_HEADERS) $(CPU_FLAGS_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(TOK_CXXFLAGS) -Itokenizer dev/bench_tokenizer.cpp $(TOK_LIB_OBJS) -o $@ $(LDLIBS_CPU)

bench-tokenizer: $(CPU)/dev/bench_tokenizer
	$(CPU)/dev/bench_tokenizer

# ---- fuzzing (clang + libFuzzer; not part of `make test`) ----------------------
TOK_FUZZ_CXX     ?= clang++
TOK_FUZZ_FLAGS   := -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
TOK_FUZZ_SRCS    := tokenizer/bpe.cpp tokenizer/unicode.cpp tokenizer/train.cpp tokenizer/shard.cpp
TOK_FUZZ_TARGETS := fuzz_encode fuzz_encoder_json fuzz_vocab_bpe
TOK_FUZZ_BINS    := $(TOK_FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
TOK_FUZZ_SECONDS ?= 60

$(BUILD)/fuzz/fuzz_%: tokenizer/fuzz_%.cpp $(TOK_FUZZ_SRCS) $(TOK_HEADERS) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(TOK_FUZZ_CXX) $(TOK_FUZZ_FLAGS) -Itokenizer $< $(TOK_FUZZ_SRCS) -o $@

fuzz-build-tokenizer: $(TOK_FUZZ_BINS)

TOK_FIXTURE := test/fixtures/tokenizer_small

# One target after another (-jobs=1: the dev machine has 2 cores); corpora
# persist in $(BUILD)/fuzz/corpus_*, seeded with the small fixture's files.
fuzz: $(TOK_FUZZ_BINS)
	@for f in $(TOK_FUZZ_TARGETS); do \
	  c=$(BUILD)/fuzz/corpus_$$f; mkdir -p $$c; \
	  cp $(TOK_FIXTURE)/encoder.json $$c/seed_encoder_json; cp $(TOK_FIXTURE)/vocab.bpe $$c/seed_vocab_bpe; \
	  echo "== $$f ($(TOK_FUZZ_SECONDS) s)"; \
	  $(BUILD)/fuzz/$$f -max_total_time=$(TOK_FUZZ_SECONDS) -print_final_stats=1 $$c || exit 1; \
	done
