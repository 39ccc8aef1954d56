# libFuzzer targets (DESIGN §6; issues 3 and 10). docs/fuzzing.md has the
# targets, the figures of their runs, and how to run them longer.
#   make fuzz            build build-fuzz/fuzz_*
#   make fuzz-run        short run of each (CI): FUZZ_SECONDS each, seeded
#                        with images made by vireo img / qemu-img (image
#                        formats), tests/fuzz/seeds_virtio.py (virtqueues),
#                        tests/fuzz/seeds/<target>/ (JSON parsers, router), plus
#                        tests/fuzz/regress/<target>/ (inputs that once crashed)
# An image format is fuzzed by adding its name to FUZZ_FORMATS.
FUZZ_FORMATS ?= qcow2 $(if $(wildcard src/block/vhd*.c),vpc) $(if $(wildcard src/block/vmdk*.c),vmdk)
# The guest's side of virtio: the ring walker and each device's requests.
FUZZ_VIRTIO ?= virtio_vq virtio_blk virtio_balloon virtio_net
# Client input: the VMM control socket, the daemon's definitions and router.
FUZZ_JSON ?= control def api
# Files from outside: snapshot state files (src/state/), export archives
# (src/mgr/export-archive.c).
FUZZ_FILES ?= state export
FUZZ_SECONDS ?= 20
FB       := build-fuzz
FCC      := clang
FCFLAGS  := -O1 -g -std=gnu11 -Wall -Wextra -Werror -Iinclude -D_GNU_SOURCE -pthread \
            -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
FLIBS    := -pthread -lz -lzstd -luring -ljson-c -ldl
FSRC     := $(wildcard src/block/*.c src/util/*.c)
FOBJ     := $(FSRC:%.c=$(FB)/%.o)
# What the guest and client targets link besides FOBJ.
FXSRC    := src/virtio/virtqueue.c src/vmm/memory.c src/vmm/dirty-track.c src/vmm/control-parse.c src/mgr/def.c \
            src/net/tap.c src/net/vlan.c src/mgr/fwdef.c src/net/fwaddr.c
FXOBJ    := $(FXSRC:%.c=$(FB)/%.o)
FTARGETS := $(FUZZ_FORMATS:%=$(FB)/fuzz_%) $(FUZZ_VIRTIO:%=$(FB)/fuzz_%) \
            $(FUZZ_JSON:%=$(FB)/fuzz_%) $(FUZZ_FILES:%=$(FB)/fuzz_%)
FALL     := $(FUZZ_FORMATS) $(FUZZ_VIRTIO) $(FUZZ_JSON) $(FUZZ_FILES)

.PHONY: all fuzz-run
all: $(FTARGETS)

FHDR     := $(wildcard include/vireo/*.h)

$(FB)/%.o: %.c $(FHDR)
	@mkdir -p $(dir $@)
	$(FCC) $(FCFLAGS) -c $< -o $@

# The device targets include the device's .c file (and fuzz_api api.c).
$(FB)/fuzz_virtio_%: tests/fuzz/fuzz_virtio.c $(FOBJ) $(FXOBJ) $(wildcard src/virtio/*.c) $(FHDR)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -DFUZZ_DEV_$* -o $@ $(filter %.o,$^) $< $(FLIBS)

$(FB)/fuzz_control $(FB)/fuzz_def $(FB)/fuzz_api: $(FB)/fuzz_%: tests/fuzz/fuzz_%.c $(FOBJ) $(FXOBJ) \
		src/mgr/api.c $(FHDR)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -o $@ $< $(filter %.o,$^) $(FLIBS)

# The state reader alone, with the util objects.
$(FB)/fuzz_state: tests/fuzz/fuzz_state.c $(FOBJ) $(FB)/src/state/state.o $(FB)/src/vmm/machine.o $(FHDR)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -o $@ $< $(filter %.o,$^) $(FLIBS)

# The export archive reader alone, over libarchive.
$(FB)/fuzz_export: tests/fuzz/fuzz_export.c $(FOBJ) $(FB)/src/mgr/export-archive.o $(FHDR)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -o $@ $< $(filter %.o,$^) $(FLIBS) -larchive -lgnutls

$(FB)/fuzz_%: tests/fuzz/fuzz_image.c $(FOBJ) $(FHDR)
	$(FCC) $(FCFLAGS) -fsanitize=fuzzer -DFUZZ_FORMAT='"$*"' -o $@ $< $(filter %.o,$^) $(FLIBS)

$(FB)/corpus/virtio_%: tests/fuzz/seeds_virtio.py
	rm -rf $@ && tests/fuzz/seeds_virtio.py $* $@

$(FB)/corpus/control $(FB)/corpus/def $(FB)/corpus/api $(FB)/corpus/state $(FB)/corpus/export: $(FB)/corpus/%: $(wildcard tests/fuzz/seeds/*/*)
	rm -rf $@ && mkdir -p $(dir $@) && cp -r tests/fuzz/seeds/$* $@

$(FB)/corpus/%: build/vireo
	tests/fuzz/seeds.sh $* $@

fuzz-run: $(FTARGETS) $(FALL:%=$(FB)/corpus/%)
	@set -e; for f in $(FALL); do \
		echo "== fuzz_$$f for $(FUZZ_SECONDS)s"; \
		$(FB)/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
			-rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
			$(FB)/corpus/$$f $$(ls -d tests/fuzz/regress/$$f 2>/dev/null) 2>&1 | tail -4; \
	done
