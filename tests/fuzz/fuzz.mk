# libFuzzer targets, one per image format parser (DESIGN §6, issue 3).
#   make fuzz            build build-fuzz/fuzz_<fmt>
#   make fuzz-run        short run of each (CI): FUZZ_SECONDS each, seeded
#                        with images made by vireo img / qemu-img, plus
#                        tests/fuzz/regress/<fmt>/ (inputs that once crashed)
# A format is fuzzed by adding its name to FUZZ_FORMATS.
FUZZ_FORMATS ?= qcow2 $(if $(wildcard src/block/vhd*.c),vpc) $(if $(wildcard src/block/vmdk*.c),vmdk)
FUZZ_SECONDS ?= 20
FB       := build-fuzz
FCC      := clang
FCFLAGS  := -O1 -g -std=gnu11 -Wall -Wextra -Werror -Iinclude -D_GNU_SOURCE -pthread \
            -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
FLIBS    := -pthread -lz -lzstd -luring -ljson-c
FSRC     := $(wildcard src/block/*.c src/util/*.c)
FOBJ     := $(FSRC:%.c=$(FB)/%.o)
FTARGETS := $(FUZZ_FORMATS:%=$(FB)/fuzz_%)

.PHONY: all fuzz-run
all: $(FTARGETS)

$(FB)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FCC) $(FCFLAGS) -c $< -o $@

$(FB)/fuzz_%: tests/fuzz/fuzz_image.c $(FOBJ)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -DFUZZ_FORMAT='"$*"' -o $@ $^ $(FLIBS)

$(FB)/corpus/%: build/vireo
	tests/fuzz/seeds.sh $* $@

fuzz-run: $(FTARGETS) $(FUZZ_FORMATS:%=$(FB)/corpus/%)
	@set -e; for f in $(FUZZ_FORMATS); do \
		echo "== fuzz_$$f for $(FUZZ_SECONDS)s"; \
		$(FB)/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
			-rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
			$(FB)/corpus/$$f $$(ls -d tests/fuzz/regress/$$f 2>/dev/null) 2>&1 | tail -4; \
	done
