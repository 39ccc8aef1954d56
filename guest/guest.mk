# The probe guest (DESIGN §5): a freestanding x86-64 ELF with a PVH note,
# booted by vireo and by QEMU -M microvm alike. Included by the top Makefile.

GUEST_CFLAGS := -std=gnu11 $(WARN) -O2 -g -ffreestanding -fno-pic -fno-pie \
	-fno-stack-protector -fno-tree-loop-distribute-patterns -mno-red-zone -mno-sse -mno-mmx -mno-avx \
	-mgeneral-regs-only -mcmodel=small -fno-asynchronous-unwind-tables \
	-nostdinc -isystem $(shell $(CC) -print-file-name=include) -Iguest -MMD -MP
GUEST_SRC := $(strip $(wildcard guest/*.c) $(wildcard guest/*.S))
GUEST_OBJ := $(patsubst guest/%,$(BUILD)/guest/%.o,$(GUEST_SRC))

.PHONY: guest
guest: $(if $(GUEST_SRC),$(BUILD)/guest/probe.elf)

$(BUILD)/guest/%.c.o: guest/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(BUILD)/guest/%.S.o: guest/%.S
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(BUILD)/guest/probe.elf: $(GUEST_OBJ) guest/probe.ld
	$(CC) -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,guest/probe.ld \
		-o $@ $(GUEST_OBJ)
