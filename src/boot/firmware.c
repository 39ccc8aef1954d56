/* Firmware boot (include/vireo/firmware.h): the BIOS image in a read-only
 * memory slot below 4 GiB and shadowed below 1 MiB, and fw_cfg filled the
 * way QEMU's pc machine fills it, so that the firmware needs no change. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/fileopen.h"
#include "vireo/firmware.h"
#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/state.h"

/* Guest RAM uses slots 0 and 1 (src/vmm/vm.c); this one is apart. */
#define FIRMWARE_SLOT      10
#define FIRMWARE_MIN_SIZE  (64u << 10)
#define FIRMWARE_MAX_SIZE  (16u << 20)
#define FIRMWARE_SHADOW    (128u << 10)
#define FIRMWARE_SHADOW_SEABIOS (256u << 10)
#define PORT_DEBUGCON      0x0402 /* QEMU's isa-debugcon, where SeaBIOS logs */

struct firmware {
	struct vm *vm;
	uint8_t *rom;
	size_t size;
	struct fwcfg *fwcfg;
	pthread_mutex_t debug_lock;
	char debug_line[256];
	size_t debug_len;
};

/* The firmware's debug log, line by line on stderr (--firmware-debug). */
static void debugcon_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
			bool is_write)
{
	struct firmware *fw = opaque;
	char c = (char)data[0];

	(void)offset;
	if (!is_write) {
		bus_put(data, len, 0xe9); /* what QEMU's debugcon reads as */
		return;
	}
	pthread_mutex_lock(&fw->debug_lock);
	if (c != '\r' && c != '\n' && fw->debug_len < sizeof(fw->debug_line) - 1)
		fw->debug_line[fw->debug_len++] = (c >= 0x20 && c < 0x7f) ? c : '?';
	if (c == '\n' || fw->debug_len == sizeof(fw->debug_line) - 1) {
		fprintf(stderr, "firmware: %.*s\n", (int)fw->debug_len, fw->debug_line);
		fw->debug_len = 0;
	}
	pthread_mutex_unlock(&fw->debug_lock);
}

static int firmware_read_image(const char *path, struct firmware *fw)
{
	struct stat st;
	ssize_t n;
	int fd, ret = 0;

	fd = file_open_checked(path, O_RDONLY, 0, "firmware", FILE_REG);
	if (fd < 0)
		return err_set(fd, "cannot open %s", err_get());
	if (fstat(fd, &st) < 0 || st.st_size < FIRMWARE_MIN_SIZE || st.st_size > FIRMWARE_MAX_SIZE ||
	    st.st_size % 4096) {
		ret = err_set(-ENOEXEC, "firmware %s: a BIOS image is 64 KiB to 16 MiB, a "
			      "multiple of 4 KiB", path);
		goto out;
	}
	fw->size = (size_t)st.st_size;
	fw->rom = mmap(NULL, fw->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fw->rom == MAP_FAILED) {
		fw->rom = NULL;
		ret = err_set(-errno, "cannot map the firmware: %m");
		goto out;
	}
	n = pread(fd, fw->rom, fw->size, 0);
	if (n != (ssize_t)fw->size)
		ret = err_set(n < 0 ? -errno : -EIO, "firmware %s: short read", path);
out:
	close(fd);
	return ret;
}

/* The image ends at 4 GiB, where the reset vector is; read-only when KVM
 * can (writes then exit to the MMIO bus, which drops them). */
static int firmware_map(struct firmware *fw, bool shadow_copy)
{
	struct vm *vm = fw->vm;
	bool ro = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0;
	struct kvm_userspace_memory_region slot = {
		.slot = FIRMWARE_SLOT,
		.flags = ro ? KVM_MEM_READONLY : 0,
		.guest_phys_addr = LAYOUT_4G - fw->size,
		.memory_size = fw->size,
		.userspace_addr = (uint64_t)(uintptr_t)fw->rom,
	};
	size_t shadow = fw->size <= FIRMWARE_SHADOW_SEABIOS ? fw->size : FIRMWARE_SHADOW;
	uint8_t *low = guest_ptr(&vm->mem, LAYOUT_HIGH_RAM_START - shadow, shadow);

	if (!low)
		return err_set(-EINVAL, "no guest RAM below 1 MiB for the firmware");
	/* The shadow RAM as the chipset holds it at reset: the image's last
	 * 128 KiB. SeaBIOS's 256 KiB build then copies the rest of itself
	 * from the high alias into RAM below 0xe0000, after opening the
	 * i440FX's PAM registers, which vireo's host bridge does not have
	 * (it says "Unable to unlock ram"): images up to 256 KiB are put
	 * there whole, as that copy would leave them. */
	if (shadow_copy)
		memcpy(low, fw->rom + fw->size - shadow, shadow);
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		return err_set(-errno, "cannot map the firmware below 4 GiB: %m");
	if (ro)
		mprotect(fw->rom, fw->size, PROT_READ);
	return 0;
}

static void e820_put(uint8_t *e, uint64_t addr, uint64_t len, uint32_t type)
{
	uint64_t a = htole64(addr), l = htole64(len);
	uint32_t t = htole32(type);

	memcpy(e, &a, 8);
	memcpy(e + 8, &l, 8);
	memcpy(e + 16, &t, 4);
}

/* QEMU's etc/e820: RAM from 0 (the firmware carves out its own areas), RAM
 * above 4 GiB, and the ECAM reserved (Linux trusts an MCFG only then). */
unsigned int firmware_e820(const struct vm *vm, uint8_t *out, unsigned int max)
{
	unsigned int n = 0;

	if (n < max)
		e820_put(out + FIRMWARE_E820_ENTRY * n++, 0, vm->mem.regions[0].size, E820_RAM);
	if (n < max)
		e820_put(out + FIRMWARE_E820_ENTRY * n++, LAYOUT_ECAM_BASE, LAYOUT_ECAM_SIZE,
			 E820_RESERVED);
	if (vm->mem.nregions > 1 && n < max)
		e820_put(out + FIRMWARE_E820_ENTRY * n++, vm->mem.regions[1].gpa,
			 vm->mem.regions[1].size, E820_RAM);
	return n;
}

/* One line per virtio-blk disk, in slot order (the --disk order): the
 * Open Firmware path QEMU gives such a disk, which SeaBIOS matches
 * against its own "/pci@i0cf8/ *@SLOT" pattern. A kernel comes first, as
 * QEMU -kernel gives its option ROM boot index 0. */
static int firmware_bootorder(struct fwcfg *f, struct pci_bus *pci, bool kernel)
{
	char text[PCI_SLOTS * 40 + 64] = "";
	size_t len = 0;

	if (kernel)
		len += (size_t)snprintf(text, sizeof(text), "/rom@genroms/linuxboot_dma.bin");

	for (unsigned int s = 0; s < PCI_SLOTS; s++) {
		const struct pci_device *d = pci->slots[s];

		if (!d || bus_get(d->config, 2) != 0x1af4 || bus_get(d->config + 2, 2) != 0x1042)
			continue;
		len += (size_t)snprintf(text + len, sizeof(text) - len,
					"%s/pci@i0cf8/scsi@%x/disk@0,0", len ? "\n" : "", s);
	}
	return len ? fwcfg_add_file(f, "bootorder", text, len + 1) : 0;
}

static int firmware_fill(struct firmware *fw, struct pci_bus *pci, bool kernel)
{
	struct vm *vm = fw->vm;
	uint8_t e820[BOOT_MAX_E820 * FIRMWARE_E820_ENTRY];
	unsigned int n = firmware_e820(vm, e820, BOOT_MAX_E820);
	int ret;

	ret = fwcfg_add_u64(fw->fwcfg, FW_CFG_RAM_SIZE, vm->mem.size);
	if (!ret)
		ret = fwcfg_add_u16(fw->fwcfg, FW_CFG_NB_CPUS, (uint16_t)vm->ncpus);
	if (!ret)
		ret = fwcfg_add_u16(fw->fwcfg, FW_CFG_MAX_CPUS, (uint16_t)vm->ncpus);
	if (!ret)
		ret = fwcfg_add_u16(fw->fwcfg, FW_CFG_BOOT_MENU, 0);
	/* The MADT's and the MP table's IRQ0 -> GSI2 override. */
	if (!ret)
		ret = fwcfg_add_u32(fw->fwcfg, FW_CFG_IRQ0_OVERRIDE, 1);
	if (!ret)
		ret = fwcfg_add_file(fw->fwcfg, "etc/e820", e820, n * FIRMWARE_E820_ENTRY);
	/* No VGA: SeaBIOS's screen output (its banner, boot messages, int 10h
	 * of boot loaders) goes to COM1 instead ("sercon"). */
	if (!ret)
		ret = fwcfg_add_file(fw->fwcfg, "etc/sercon-port", "\xf8\x03", 2);
	if (!ret)
		ret = firmware_bootorder(fw->fwcfg, pci, kernel);
	return ret ? err_set(ret, "cannot fill fw_cfg: %s", strerror(-ret)) : 0;
}

int firmware_load(struct vm *vm, struct pci_bus *pci, const char *path,
		  const struct boot_config *cfg, bool debug, struct firmware **out)
{
	struct firmware *fw = calloc(1, sizeof(*fw));
	int ret;

	*out = NULL;
	if (!fw)
		return err_set(-ENOMEM, "out of memory");
	fw->vm = vm;
	pthread_mutex_init(&fw->debug_lock, NULL);
	ret = firmware_read_image(path, fw);
	/* Measured: kvm_pvm (DESIGN §5) never returns from KVM_RUN on real-mode
	 * code, and the firmware starts in real mode. */
	if (!ret && !vm->hw_virt)
		ret = err_set(-ENOTSUP, "--firmware needs hardware virtualization (vmx or svm): "
			      "this host's KVM cannot run the firmware's real-mode code");
	if (!ret && !(fw->fwcfg = fwcfg_create(vm)))
		ret = -ENOMEM;
	if (!ret)
		ret = firmware_fill(fw, pci, cfg->kernel != NULL);
	/* Built where the shadow goes next. */
	if (!ret)
		ret = firmware_add_acpi(fw->fwcfg, vm);
	if (!ret)
		ret = firmware_map(fw, true);
	if (!ret && debug)
		ret = bus_register(&vm->pio, PORT_DEBUGCON, 1, debugcon_io, fw, "debugcon");
	/* Not rebuilt by a restore (fwcfg_save()). */
	if (!ret && cfg->kernel) {
		fwcfg_set_boot_only(fw->fwcfg, true);
		ret = firmware_add_kernel(fw->fwcfg, vm, cfg);
		fwcfg_set_boot_only(fw->fwcfg, false);
	}
	if (ret) {
		firmware_destroy(fw);
		return ret;
	}
	*out = fw;
	return 0;
}

int firmware_save(struct firmware *fw, struct state_writer *w)
{
	state_begin(w, STATE_SEC_FIRMWARE, 0, STATE_SECTION_CRITICAL);
	state_put_bytes(w, fw->rom, fw->size);
	state_end(w);
	return fwcfg_save(fw->fwcfg, w);
}

/* The ROM as the state holds it: the section's payload is the image. */
static int firmware_read_state(const struct state_reader *r, struct firmware *fw)
{
	struct state_cursor c;
	int ret = state_section(r, STATE_SEC_FIRMWARE, 0, &c);

	if (ret)
		return ret;
	if (c.len < FIRMWARE_MIN_SIZE || c.len > FIRMWARE_MAX_SIZE || c.len % 4096)
		return err_set(-EINVAL, "state file: a firmware image of %zu bytes (64 KiB to "
			       "16 MiB, a multiple of 4 KiB)", c.len);
	fw->size = c.len;
	fw->rom = mmap(NULL, fw->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fw->rom == MAP_FAILED) {
		fw->rom = NULL;
		return err_set(-errno, "cannot map the firmware: %m");
	}
	state_get_bytes(&c, fw->rom, fw->size);
	return state_done(&c);
}

/* The tables are built where the guest's RAM (the shadow ROM, by now)
 * is: in a zeroed area (loader_build() trims its trailing zeros), as at
 * the boot, and the guest's bytes are put back after. */
static int firmware_restore_acpi(struct firmware *fw)
{
	size_t len = LAYOUT_ACPI_TABLES_END - LAYOUT_ACPI_TABLES;
	uint8_t *area = guest_ptr(&fw->vm->mem, LAYOUT_ACPI_TABLES, len);
	uint8_t *keep = malloc(len);
	int ret;

	if (!area || !keep) {
		free(keep);
		return err_set(area ? -ENOMEM : -EINVAL, "cannot rebuild the ACPI tables");
	}
	memcpy(keep, area, len);
	memset(area, 0, len);
	ret = firmware_add_acpi(fw->fwcfg, fw->vm);
	memcpy(area, keep, len);
	free(keep);
	return ret;
}

int firmware_restore(struct vm *vm, struct pci_bus *pci, const struct state_reader *r,
		     bool kernel, bool debug, struct firmware **out)
{
	struct firmware *fw = calloc(1, sizeof(*fw));
	int ret;

	*out = NULL;
	if (!fw)
		return err_set(-ENOMEM, "out of memory");
	fw->vm = vm;
	pthread_mutex_init(&fw->debug_lock, NULL);
	ret = firmware_read_state(r, fw);
	if (!ret && !vm->hw_virt)
		ret = err_set(-ENOTSUP, "a VM booted through firmware needs hardware "
			      "virtualization (vmx or svm)");
	if (!ret && !(fw->fwcfg = fwcfg_create(vm)))
		ret = -ENOMEM;
	if (!ret)
		ret = firmware_fill(fw, pci, kernel);
	if (!ret)
		ret = firmware_restore_acpi(fw);
	if (!ret)
		ret = firmware_map(fw, false);
	if (!ret && debug)
		ret = bus_register(&vm->pio, PORT_DEBUGCON, 1, debugcon_io, fw, "debugcon");
	if (!ret)
		ret = fwcfg_restore(fw->fwcfg, r);
	if (ret) {
		firmware_destroy(fw);
		return ret;
	}
	*out = fw;
	return 0;
}

void firmware_destroy(struct firmware *fw)
{
	if (!fw)
		return;
	if (fw->fwcfg) {
		bus_unregister(&fw->vm->pio, PORT_FWCFG_SELECTOR);
		bus_unregister(&fw->vm->pio, PORT_FWCFG_DMA);
	}
	fwcfg_destroy(fw->fwcfg);
	bus_unregister(&fw->vm->pio, PORT_DEBUGCON);
	pthread_mutex_destroy(&fw->debug_lock);
	if (fw->rom)
		munmap(fw->rom, fw->size);
	free(fw);
}
