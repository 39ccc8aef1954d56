/* The BSP's initial register state for each boot protocol. Application
 * processors are left to the in-kernel LAPIC: they wait for INIT/SIPI. */
#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vireo/boot.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define CR0_PE 0x1ULL
#define CR0_ET 0x10ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

/* A flat segment. code selects type 0xb (exec/read, accessed), else 0x3. */
static struct kvm_segment flat_segment(uint16_t selector, bool code, bool long_mode)
{
	return (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = selector,
		.type = code ? 0xb : 0x3, .present = 1, .dpl = 0, .s = 1,
		.db = (code && long_mode) ? 0 : 1, .l = (code && long_mode) ? 1 : 0, .g = 1,
	};
}

static void set_common_sregs(struct kvm_sregs *s, bool long_mode)
{
	struct kvm_segment data = flat_segment(0x18, false, long_mode);

	s->cs = flat_segment(0x10, true, long_mode);
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	/* VMX insists on a usable busy TSS even though the guest never uses it. */
	s->tr = (struct kvm_segment){ .base = 0, .limit = 0x67, .selector = 0x20,
				      .type = 0xb, .present = 1, .s = 0 };
	s->gdt.base = LAYOUT_BOOT_GDT;
	s->gdt.limit = 5 * 8 - 1;
}

/* GDT matching the selectors above: 0x10 code, 0x18 data, 0x20 TSS. The
 * 64-bit Linux boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18. */
static void write_boot_gdt(struct vm *vm, bool long_mode)
{
	uint64_t *gdt = guest_ptr(&vm->mem, LAYOUT_BOOT_GDT, 5 * 8);

	gdt[0] = 0;
	gdt[1] = 0;
	gdt[2] = long_mode ? 0x00af9b000000ffffULL : 0x00cf9b000000ffffULL;
	gdt[3] = 0x00cf93000000ffffULL;
	gdt[4] = 0x00008b0000000067ULL;
}

static int set_regs(struct vcpu *bsp, struct kvm_sregs *sregs, struct kvm_regs *regs)
{
	if (ioctl(bsp->fd, KVM_SET_SREGS, sregs) < 0)
		return err_set(-errno, "KVM_SET_SREGS: %m");
	if (ioctl(bsp->fd, KVM_SET_REGS, regs) < 0)
		return err_set(-errno, "KVM_SET_REGS: %m");
	return 0;
}

int regs_setup_pvh(struct vm *vm, uint64_t entry, uint64_t start_info)
{
	struct vcpu *bsp = &vm->vcpus[0];
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = entry, .rbx = start_info, .rflags = 0x2 };

	if (ioctl(bsp->fd, KVM_GET_SREGS, &sregs) < 0)
		return err_set(-errno, "KVM_GET_SREGS: %m");
	write_boot_gdt(vm, false);
	set_common_sregs(&sregs, false);
	sregs.cr0 = CR0_PE | CR0_ET;
	sregs.cr4 = 0;
	sregs.efer = 0;
	return set_regs(bsp, &sregs, &regs);
}

/* Identity map of the first 4 GiB with 2 MiB pages: PML4 -> one PDPT ->
 * four page directories, at LAYOUT_PML4. */
static void write_identity_page_tables(struct vm *vm)
{
	uint64_t *pml4 = guest_ptr(&vm->mem, LAYOUT_PML4, 6 * 4096);
	uint64_t *pdpt = pml4 + 512, *pd = pml4 + 1024;

	memset(pml4, 0, 6 * 4096);
	pml4[0] = (LAYOUT_PML4 + 0x1000) | 0x3;
	for (uint64_t i = 0; i < 4; i++)
		pdpt[i] = (LAYOUT_PML4 + 0x2000 + i * 0x1000) | 0x3;
	for (uint64_t i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB page */
}

int regs_setup_long_mode(struct vm *vm, uint64_t entry, uint64_t boot_params)
{
	struct vcpu *bsp = &vm->vcpus[0];
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = entry, .rsi = boot_params, .rflags = 0x2 };

	if (ioctl(bsp->fd, KVM_GET_SREGS, &sregs) < 0)
		return err_set(-errno, "KVM_GET_SREGS: %m");
	write_boot_gdt(vm, true);
	write_identity_page_tables(vm);
	set_common_sregs(&sregs, true);
	sregs.cr3 = LAYOUT_PML4;
	sregs.cr4 = CR4_PAE;
	sregs.cr0 = CR0_PE | CR0_ET | CR0_PG | 0x50022ULL; /* + MP, NE, WP, AM */
	sregs.efer = EFER_LME | EFER_LMA;
	return set_regs(bsp, &sregs, &regs);
}
