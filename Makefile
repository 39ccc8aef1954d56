# vireo — GNU Makefile. `make` builds build/vireo and build/guest/probe.elf;
# `make test` runs every test tier (DESIGN §6); `make asan` runs the unit tests
# under ASan/UBSan; `make fuzz` builds the libFuzzer targets.

CC      ?= cc
BUILD   ?= build
WARN    := -Wall -Wextra -Wformat=2 -Wmissing-prototypes -Wstrict-prototypes \
           -Wshadow -Werror
CFLAGS  ?= -O2 -g
override CFLAGS += -std=gnu11 $(WARN) -Iinclude -D_GNU_SOURCE -pthread -MMD -MP
LDLIBS  := -pthread -lz -lzstd -luring -ljson-c -lseccomp -lmnl -lnftables -lgnutls -larchive
# The whole library is linked so that modules that are only reached through
# weak references (image formats in src/block/registry.c) are kept.
WHOLE_LIB = -Wl,--whole-archive $(BUILD)/libvireo.a -Wl,--no-whole-archive

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all test unit integration asan asan-images fuzz fuzz-run bench clean
all: $(BUILD)/vireo guest

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libvireo.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/vireo: $(BUILD)/src/main.o $(BUILD)/libvireo.a
	$(CC) $(CFLAGS) -o $@ $(BUILD)/src/main.o $(WHOLE_LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libvireo.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(WHOLE_LIB) $(LDLIBS) -lcmocka

TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)

$(BUILD)/tests/tools/%: tests/tools/%.c $(BUILD)/libvireo.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(WHOLE_LIB) $(LDLIBS)

include guest/guest.mk

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: all $(TOOL_BIN)
	pytest-3 -v -rs tests/integration

test: unit integration

asan:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" unit

# The image corruption and random-write tests on the ASan/UBSan build.
ASAN_CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
asan-images:
	$(MAKE) BUILD=build-asan CFLAGS="$(ASAN_CFLAGS)" build-asan/vireo build-asan/tests/tools/blkio
	VIREO_BUILD=build-asan pytest-3 -q -rs tests/integration/test_image_corruption.py \
		tests/integration/test_images.py tests/integration/test_image_vhd_vmdk.py -k 'corrupt or random or bad or poke or truncated'

fuzz:
	$(MAKE) -f tests/fuzz/fuzz.mk

# Short fuzzing run of every libFuzzer target (CI): image formats, virtio, JSON, router.
fuzz-run: all
	$(MAKE) -f tests/fuzz/fuzz.mk fuzz-run

bench: all
	bench/boot.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
