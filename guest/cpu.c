/* CPL0 services for CPL3 code: the ud2 gate (rdmsr, wrmsr, hlt), the
 * exception report, and interrupt dispatch. trap_dispatch runs emulated on
 * our test hosts, so it stays short. */
#include "probe.h"

static void (*irq_handlers[256])(void);
volatile uint32_t irq_counts[256];

void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

static void idt_set(unsigned vec)
{
	uint64_t addr = (uint64_t)(uintptr_t)trap_stubs + 16 * vec;
	uint64_t *e = (uint64_t *)(idt + 16 * vec);

	/* 64-bit interrupt gate (type 0xE), DPL 0: IF is cleared on entry and
	 * no vector can be raised by `int n` from CPL3 (the gate is ud2). */
	e[0] = (addr & 0xffff) | ((uint64_t)SEL_KCODE << 16) |
	       ((uint64_t)0x8e << 40) | ((addr >> 16 & 0xffff) << 48);
	e[1] = addr >> 32;
}

/* Called at CPL3 by the BSP before anything can fault: the IDTR already
 * points at this table. */
void idt_init(void)
{
	for (unsigned v = 0; v < 256; v++)
		idt_set(v);
}

/* All ports allowed for every CPU. Loaders zero .noinit anyway; this is for
 * one that does not. Harmless on the BSP's live bitmap: it only grants. */
void tss_clear_iomaps(void)
{
	for (unsigned c = 0; c < MAX_CPUS; c++)
		__builtin_memset(tss_array + c * TSS_SIZE + 104, 0, 8192);
}

void irq_register(unsigned vec, void (*fn)(void))
{
	irq_handlers[vec & 0xff] = fn;
}

__attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		sys_call(SYS_HALT, 0, 0);
}

__attribute__((format(printf, 1, 2)))
static void fault_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	probe_vprintf(fmt, ap, true);
	va_end(ap);
}

static void fault_report(struct trap_frame *f)
{
	fault_printf("PROBE fault vector=%lu rip=0x%lx err=0x%lx\n",
		     (unsigned long)f->vec, (unsigned long)f->rip,
		     (unsigned long)f->err);
	fault_printf("PROBE fault_state cs=0x%lx rflags=0x%lx rsp=0x%lx\n",
		     (unsigned long)f->cs, (unsigned long)f->rflags, (unsigned long)f->rsp);
	if (f->vec == 14) {
		uint64_t cr2;

		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		fault_printf("PROBE fault_addr=0x%lx\n", (unsigned long)cr2);
	}
	probe_exit(3);
}

static void wrmsr0(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

/* sti;hlt is atomic (interrupt shadow): an interrupt pending in the APIC
 * wakes it at once. A non-zero timeout arms the x2APIC one-shot timer
 * (ticks of the APIC bus clock) so the wait is bounded. */
static void wait_irq(uint64_t ticks)
{
	if (ticks) {
		wrmsr0(0x83e, 0xb);		/* divide by 1 */
		wrmsr0(0x832, VEC_TIMER);	/* LVT timer: one-shot */
		wrmsr0(0x838, ticks);		/* initial count */
	}
	__asm__ volatile("sti; hlt; cli" ::: "memory");
	if (ticks)
		wrmsr0(0x838, 0);
}

static void sys_dispatch(struct trap_frame *f)
{
	uint32_t lo, hi;

	switch (f->rax) {
	case SYS_RDMSR:
		__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"((uint32_t)f->rdi));
		f->rax = (uint64_t)hi << 32 | lo;
		return;
	case SYS_WRMSR:
		wrmsr0((uint32_t)f->rdi, f->rsi);
		f->rax = 0;
		return;
	case SYS_WAIT_IRQ:
		wait_irq(f->rdi);
		return;
	case SYS_HALT:
		__asm__ volatile("cli; hlt" ::: "memory");
		return;
	}
	f->rax = (uint64_t)-1;
}

void trap_dispatch(struct trap_frame *f)
{
	if (f->vec == 6 && f->rip == (uintptr_t)sys_gate) {
		sys_dispatch(f);
		f->rip += 2;			/* past the ud2 */
	} else if (f->vec < 32) {
		fault_report(f);
	} else {
		irq_counts[f->vec & 0xff]++;
		if (irq_handlers[f->vec])
			irq_handlers[f->vec]();
		if (f->vec != VEC_SPURIOUS)
			wrmsr0(0x80b, 0);	/* x2APIC EOI */
	}
}
