/* The probe guest (DESIGN §5): shared constants and declarations.
 * Included by assembly too, so the C part is guarded. */
#ifndef PROBE_H
#define PROBE_H

#define MAX_CPUS	64
#define KSTACK_SHIFT	13		/* 8 KiB CPL0 stack per CPU */
#define USTACK_SHIFT	14		/* 16 KiB CPL3 stack per CPU */

#define SEL_KCODE	0x08
#define SEL_KDATA	0x10
#define SEL_KCODE32	0x18
#define SEL_UDATA	0x23		/* 0x20 | RPL 3 */
#define SEL_UCODE	0x2b		/* 0x28 | RPL 3 */
#define SEL_TSS0	0x30		/* CPU i: SEL_TSS0 + 16 * i */

#define VEC_TIMER	0x31		/* bounds SYS_WAIT_IRQ */
#define VEC_GED		0x32		/* ACPI Generic Event Device (power button) */
#define VEC_SPURIOUS	0xff

/* TSS + I/O permission bitmap (all ports allowed, must be zero memory). */
#define TSS_LIMIT	(104 + 8192)
#define TSS_SIZE	8320
#define AP_TRAMP_PADDR	0x8000		/* SIPI vector 0x08 */

/* How the probe was entered (boot_entry in boot.S). */
#define BOOT_ENTRY_PVH		0	/* pvh_start: PVH start info in %ebx */
#define BOOT_ENTRY_LINUX64	1	/* startup_64: boot_params in %rsi */
#define BOOT_ENTRY_LINUX32	2	/* startup_32: boot_params in %esi */

#ifndef __ASSEMBLER__
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Register frame built by trap_common in boot.S; order matches its pushes. */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vec, err, rip, cs, rflags, rsp, ss;
};

/* PVH start info (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
	uint64_t memmap_paddr;		/* version >= 1 */
	uint32_t memmap_entries, reserved;
};

struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

/* Syscall gate (boot.S): sys_call(nr, a, b) traps with ud2 at sys_gate;
 * in the trap frame nr is rax, a is rdi, b is rsi, the result goes in rax. */
enum {
	SYS_RDMSR = 1,		/* a = msr; returns its value */
	SYS_WRMSR,		/* a = msr, b = value */
	SYS_WAIT_IRQ,		/* take one interrupt; a = timeout in APIC ticks or 0 */
	SYS_HALT,		/* cli; hlt */
};

/* boot.S */
extern uint32_t start_info_paddr, boot_entry;
extern uint64_t boot_params_paddr;
extern volatile uint32_t ap_boot_index;
extern char ap_tramp_start[], ap_tramp_end[];
extern char trap_stubs[], sys_gate[];
extern uint8_t idt[], tss_array[];

/* cpu.c: privileged operations from CPL3, and the trap handler */
uint64_t sys_call(uint64_t nr, uint64_t a, uint64_t b);
static inline uint64_t rdmsr(uint32_t msr) { return sys_call(SYS_RDMSR, msr, 0); }
static inline void wrmsr(uint32_t msr, uint64_t v) { sys_call(SYS_WRMSR, msr, v); }
void idt_init(void);
void tss_clear_iomaps(void);
void irq_register(unsigned vec, void (*fn)(void));
extern volatile uint32_t irq_counts[256];	/* interrupts taken per vector */
void trap_dispatch(struct trap_frame *f);
__attribute__((noreturn)) void halt_forever(void);
void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]);

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* serial.c: COM1 output; every probe_printf call is one atomic line */
void serial_init(void);
void probe_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void probe_vprintf(const char *fmt, va_list ap, bool force);
/* A whole line in one string instruction (one VM exit), for volume. */
void probe_write_fast(const char *s, size_t n);
size_t probe_strlen(const char *s);
int probe_memcmp(const void *a, const void *b, size_t n);
void probe_memcpy(void *d, const void *s, size_t n);

/* clock.c: nanoseconds since an arbitrary origin */
const char *clock_init(bool allow_kvmclock);
uint64_t clock_ns(void);
void clock_delay_us(uint64_t us);
/* KVM steal time of the BSP (ns); steal_init() false: not offered. */
bool steal_init(void);
uint64_t steal_ns(void);

/* bootinfo.c: what the loader passed, whichever protocol it used */
#define BOOT_MAX_MEM 128
struct boot_info {
	const char *entry;		/* "pvh", "linux64", "linux32" */
	const char *rsdp_from;		/* "start_info", "boot_params" */
	uint32_t start_info_version;	/* PVH */
	uint16_t protocol;		/* Linux: boot_params version (0x20c = 2.12) */
	const char *cmdline;
	uint64_t rsdp;			/* 0: scan the BIOS area */
	uint64_t initrd_addr, initrd_size;
	uint32_t nmem;
	struct hvm_memmap_entry mem[BOOT_MAX_MEM];
};
extern struct boot_info boot;
int bootinfo_init(void);

/* acpi.c */
struct acpi_gas {
	uint8_t space, bit_width, bit_offset, access_size;
	uint64_t addr;
};
struct acpi_info {
	uint64_t rsdp;
	bool rsdp_scanned;		/* not from start_info: BIOS area scan */
	char tables[64];		/* signatures seen, comma-separated */
	int ncpus;
	uint32_t apic_ids[MAX_CPUS];
	bool hw_reduced;
	struct acpi_gas sleep_ctl;
	uint32_t pm1a_cnt;
	int slp_typ_s5;			/* -1: no _S5_ in the DSDT */
	uint64_t ecam_base;		/* 0: no MCFG */
	uint8_t bus_start, bus_end;
	uint64_t ioapic_base;
	uint32_t com1_gsi;
	int ged_gsi;			/* -1: no GED (ACPI0013) in the DSDT */
	uint8_t ged_flags;		/* its Extended Interrupt flags: AML_IRQ_* */
};
#define AML_IRQ_EDGE		0x02	/* else level */
#define AML_IRQ_ACTIVE_LOW	0x04	/* else active high */
extern struct acpi_info acpi;
int acpi_init(uint64_t rsdp_hint);
__attribute__((noreturn)) void acpi_poweroff(void);

/* power.c */
__attribute__((noreturn)) void probe_exit(uint32_t code);

/* smp.c */
int x2apic_enable(void);
uint32_t x2apic_id(void);
int smp_start_aps(void);
__attribute__((noreturn)) void ap_main(uint32_t cpu);

/* irq.c: IOAPIC redirection entry bits for ioapic_route's mode */
#define IOAPIC_ACTIVE_LOW	(1u << 13)
#define IOAPIC_LEVEL		(1u << 15)
#define IOAPIC_MASKED		(1u << 16)
void ioapic_route(uint32_t gsi, uint32_t vec, uint32_t apic_id, uint32_t mode);

/* ged.c: the ACPI power button (Generic Event Device) */
int ged_arm(void);
bool ged_pressed(void);

/* scenarios */
void scn_pci(void);
void scn_serial_irq(void);
void scn_wait(const char *arg);
void scn_echo(const char *arg);
#endif /* __ASSEMBLER__ */
#endif /* PROBE_H */
