# The probe guest (DESIGN §5), booted by vireo and by QEMU -M microvm alike,
# in three forms from the same objects (guest/README.md):
#   probe.elf      ELF with a Xen PVH note (PVH boot)
#   probe64.elf    ELF without the note, e_entry = startup_64 (64-bit Linux
#                  boot protocol with a boot_params the VMM synthesises)
#   probe.bzimage  bzImage: real-mode setup (bzsetup.S) + probe64.elf's
#                  flat image as the protected-mode part
# Included by the top Makefile.

GUEST_CFLAGS := -std=gnu11 $(WARN) -O2 -g -ffreestanding -fno-pic -fno-pie \
	-fno-stack-protector -fno-tree-loop-distribute-patterns -mno-red-zone -mno-sse -mno-mmx -mno-avx \
	-mgeneral-regs-only -mcmodel=small -fno-asynchronous-unwind-tables \
	-nostdinc -isystem $(shell $(CC) -print-file-name=include) -Iguest -MMD -MP
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--no-warn-rwx-segments
# pvhnote.S goes into probe.elf only; bzsetup.S is the bzImage's real-mode part.
GUEST_EXTRA := guest/pvhnote.S guest/bzsetup.S
GUEST_SRC := $(strip $(wildcard guest/*.c) $(filter-out $(GUEST_EXTRA),$(wildcard guest/*.S)))
GUEST_OBJ := $(patsubst guest/%,$(BUILD)/guest/%.o,$(GUEST_SRC))
G := $(BUILD)/guest
OBJCOPY ?= objcopy

.PHONY: guest
guest: $(if $(GUEST_SRC),$(G)/probe.elf $(G)/probe64.elf $(G)/probe.bzimage)

$(G)/%.c.o: guest/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(G)/%.S.o: guest/%.S
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(G)/probe.lds: guest/probe.ld.in
	@mkdir -p $(dir $@)
	$(CC) -E -P -undef -x c -DPVH $< -o $@

$(G)/probe64.lds: guest/probe.ld.in
	@mkdir -p $(dir $@)
	$(CC) -E -P -undef -x c $< -o $@

$(G)/probe.elf: $(GUEST_OBJ) $(G)/pvhnote.S.o $(G)/probe.lds
	$(CC) $(GUEST_LDFLAGS) -Wl,-T,$(G)/probe.lds -o $@ $(GUEST_OBJ) $(G)/pvhnote.S.o

$(G)/probe64.elf: $(GUEST_OBJ) $(G)/probe64.lds
	$(CC) $(GUEST_LDFLAGS) -Wl,-T,$(G)/probe64.lds -o $@ $(GUEST_OBJ)

$(G)/bzsetup.elf: $(G)/bzsetup.S.o guest/bzsetup.ld $(G)/probe64.elf
	$(CC) $(GUEST_LDFLAGS) -Wl,-T,guest/bzsetup.ld -Wl,--just-symbols=$(G)/probe64.elf \
		-o $@ $(G)/bzsetup.S.o

$(G)/probe.bzimage: $(G)/bzsetup.elf $(G)/probe64.elf
	$(OBJCOPY) -O binary -j .setup $(G)/bzsetup.elf $@.setup
	$(OBJCOPY) -O binary $(G)/probe64.elf $@.pm
	cat $@.setup $@.pm > $@
	@rm -f $@.setup $@.pm
