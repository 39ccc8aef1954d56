/* Probe guest boot path. CPL0 code is emulated (~1.5 M instr/s) on our test
 * hosts (DESIGN §5), so everything here is the minimum to reach CPL3 with
 * port I/O allowed: tables are built by assembler directives, the IDT is filled later
 * from C at CPL3 (lidt only loads its address), .bss is cleared at CPL3. */
#include "probe.h"

/* 32-bit protected mode, paging off -> 64-bit code at SEL_KCODE:\target. */
.macro ENTER_LONG target
	mov	%cr4, %eax
	or	$0x20, %eax			/* PAE */
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$0xc0000080, %ecx		/* EFER */
	rdmsr
	or	$0x100, %eax			/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax		/* PG | PE */
	mov	%eax, %cr0
	ljmp	$SEL_KCODE, $\target
.endm

/* The Linux boot protocol entries (Documentation/arch/x86/boot.rst), first
 * in the image so they sit where a bzImage loader expects them: the 32-bit
 * entry at the start of the protected-mode code (code32_start, 1 MiB) and
 * the 64-bit entry 0x200 bytes further. Both only record where boot_params
 * is and join the PVH path; boot_params is read at CPL3 (bootinfo.c). */
	.section .text.head, "ax"
	.code32
	.globl	startup_32
startup_32:					/* %esi = boot_params; flat CS/DS, paging off */
	cli
	cld
	movl	$BOOT_ENTRY_LINUX32, boot_entry
	mov	%esi, boot_params_paddr
	lgdt	gdt_ptr
	mov	$SEL_KDATA, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	ENTER_LONG long_entry_bsp

	.org	0x200
	.code64
	.globl	startup_64
startup_64:					/* %rsi = boot_params; long mode, loader's page tables */
	cli
	cld
	movl	$BOOT_ENTRY_LINUX64, boot_entry(%rip)
	mov	%rsi, boot_params_paddr(%rip)
	lgdt	gdt_ptr(%rip)
	lea	pml4(%rip), %rax		/* ours: the loader's may lack U/S */
	mov	%rax, %cr3
	lea	kstacks + (1 << KSTACK_SHIFT)(%rip), %rsp
	pushq	$SEL_KCODE			/* reload CS from our GDT */
	lea	long_entry_bsp(%rip), %rax
	push	%rax
	lretq

	.section .text.boot, "ax"
	.code32
	.globl	pvh_start
pvh_start:					/* %ebx = struct hvm_start_info */
	cli
	cld
	mov	%ebx, start_info_paddr
	lgdt	gdt_ptr
	mov	$SEL_KDATA, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	ENTER_LONG long_entry_bsp

	.globl	ap_entry32
ap_entry32:					/* from the real-mode trampoline */
	mov	$SEL_KDATA, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	ENTER_LONG long_entry_ap

	.code64
long_entry_bsp:
	xor	%r12d, %r12d			/* CPU index 0 */
	lea	user_entry_bsp(%rip), %r13
	jmp	cpu_setup
long_entry_ap:
	mov	ap_boot_index(%rip), %r12d
	lea	ap_main(%rip), %r13
	/* fall through */

/* Per-CPU CPL0 state for CPU %r12: stack, TSS (rsp0, I/O bitmap), TR, IDTR;
 * then iretq to %r13 at CPL3 with IF=0 and %rdi = CPU index. Port I/O at
 * CPL3 is granted twice. The TSS I/O bitmap is what our machines' KVM
 * backend honours (it never lets IOPL reach CPL3: iretq and popfq ignore
 * it). IOPL=3 is what SVM and VMX honour first: QEMU's TCG, which runs
 * the nested test host, checks the bitmap only through a TR of type 9
 * (available), and a TR restored from KVM (snapshot, migration) has type
 * 11 (busy, as KVM reports it), so there port I/O after a restore would
 * raise #GP. The code at CPL3 never executes cli, sti or popf. */
cpu_setup:
	mov	$SEL_KDATA, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	xor	%eax, %eax
	mov	%eax, %fs
	mov	%eax, %gs
	lea	1(%r12), %rax
	shl	$KSTACK_SHIFT, %rax
	lea	kstacks(%rip), %rsp
	add	%rax, %rsp
	imul	$TSS_SIZE, %r12, %rbx
	lea	tss_array(%rip), %rax
	add	%rax, %rbx			/* %rbx = this CPU's TSS */
	mov	%rsp, 4(%rbx)			/* rsp0 */
	movw	$104, 102(%rbx)			/* I/O bitmap right after */
	movb	$0xff, 104 + 8192(%rbx)		/* bitmap terminator */
	/* 16-byte TSS descriptor: limit 103, type 0x89, base split in 4 */
	mov	%rbx, %rax
	shl	$16, %rax
	mov	$0xffffff0000, %rcx
	and	%rcx, %rax
	or	$TSS_LIMIT, %rax
	mov	$0x89, %rcx
	shl	$40, %rcx
	or	%rcx, %rax
	mov	%rbx, %rcx
	shr	$24, %rcx
	and	$0xff, %ecx
	shl	$56, %rcx
	or	%rcx, %rax
	mov	%r12, %rdx
	shl	$4, %rdx
	lea	gdt_tss(%rip), %rcx
	mov	%rax, (%rcx, %rdx)
	mov	%rbx, %rax
	shr	$32, %rax
	mov	%rax, 8(%rcx, %rdx)
	lea	SEL_TSS0(%rdx), %eax
	ltr	%ax
	lidt	idt_ptr(%rip)
	lea	1(%r12), %rax
	shl	$USTACK_SHIFT, %rax
	lea	ustacks(%rip), %rcx
	lea	-8(%rcx, %rax), %rax		/* as if called: rsp+8 16-aligned */
	pushq	$SEL_UDATA
	push	%rax
	pushq	$0x3002				/* IOPL=3, IF=0: see above */
	pushq	$SEL_UCODE
	push	%r13
	mov	%r12, %rdi
	iretq

/* First CPL3 code on the BSP: clear .bss (stacks and TSSes are in .noinit). */
user_entry_bsp:
	lea	__bss_start(%rip), %rdi
	lea	__bss_end(%rip), %rcx
	sub	%rdi, %rcx
	xor	%eax, %eax
	rep stosb
	call	probe_main
	ud2

/* uint64_t sys_call(nr, a, b): the CPL3 -> CPL0 gate. `int $0x80` raises
 * #UD at CPL3 on this host's KVM backend, so the gate is a ud2 at a known
 * address: trap_dispatch recognises it, does the call, and skips it. */
	.globl	sys_call, sys_gate
sys_call:
	mov	%rdi, %rax
	mov	%rsi, %rdi
	mov	%rdx, %rsi
sys_gate:
	ud2
	ret

/* Interrupt/exception stubs, 16 bytes apart (idt_init relies on that).
 * Vectors with a CPU error code skip the dummy push. */
	.text
	.balign	16
	.globl	trap_stubs
trap_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	.if	!(vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
	pushq	$0
	.endif
	pushq	$vec
	jmp	trap_common
	.set	vec, vec + 1
	.endr

trap_common:
	push	%rax
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%rbp
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	mov	%rsp, %rdi
	cld
	call	trap_dispatch
	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rbp
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rbx
	pop	%rax
	add	$16, %rsp			/* vector, error code */
	iretq

/* AP real-mode trampoline. The BSP copies it to AP_TRAMP_PADDR; it only
 * uses offsets relative to its start (CS = 0x0800) and absolute addresses
 * of the main image, which stays where it was loaded. */
	.code16
	.globl	ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	mov	%cs, %ax
	mov	%ax, %ds
	lgdtl	ap_tramp_gdtr - ap_tramp_start
	mov	%cr0, %eax
	or	$1, %eax
	mov	%eax, %cr0
	ljmpl	$SEL_KCODE32, $ap_entry32
	.balign	8
ap_tramp_gdtr:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_tramp_end:
	.code64

	.data
	.globl	start_info_paddr, ap_boot_index, boot_entry, boot_params_paddr
start_info_paddr: .long 0
boot_entry:	.long BOOT_ENTRY_PVH
ap_boot_index:	.long 0
	.balign	8
boot_params_paddr: .quad 0

	.balign	16
gdt:
	.quad	0
	.quad	0x00af9a000000ffff		/* 0x08 kernel code, 64-bit */
	.quad	0x00cf92000000ffff		/* 0x10 kernel data */
	.quad	0x00cf9a000000ffff		/* 0x18 kernel code, 32-bit */
	.quad	0x00cff2000000ffff		/* 0x20 user data, DPL 3 */
	.quad	0x00affa000000ffff		/* 0x28 user code, 64-bit, DPL 3 */
gdt_tss:
	.fill	MAX_CPUS * 2, 8, 0		/* TSS descriptors, built per CPU */
gdt_end:

	.balign	8
gdt_ptr:					/* lgdt in 32-bit mode reads 6 bytes */
	.word	gdt_end - gdt - 1
	.quad	gdt
	.balign	8
idt_ptr:
	.word	256 * 16 - 1
	.quad	idt

/* Identity map of the first 4 GiB with 2 MiB pages, all user-accessible
 * (U/S) so CPL3 reaches RAM, ACPI tables and MMIO. The top GiB (MMIO:
 * IOAPIC, ECAM, GED) is uncached (PCD | PWT). */
	.balign	4096
pml4:
	.quad	pdpt + 0x7
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0007, pd + 0x1007, pd + 0x2007, pd + 0x3007
	.fill	508, 8, 0
pd:
	.set	addr, 0
	.rept	2048
	.if	addr >= 0xc0000000
	.quad	addr | 0x9f			/* P RW US PWT PCD PS */
	.else
	.quad	addr | 0x87			/* P RW US PS */
	.endif
	.set	addr, addr + 0x200000
	.endr

	.bss
	.balign	4096
	.globl	idt
idt:	.fill	256 * 16, 1, 0

	.section .noinit, "aw", @nobits
	.balign	4096
kstacks: .fill	MAX_CPUS << KSTACK_SHIFT, 1, 0
ustacks: .fill	MAX_CPUS << USTACK_SHIFT, 1, 0
	.balign	128
	.globl	tss_array
tss_array: .fill MAX_CPUS * TSS_SIZE, 1, 0
	.section .note.GNU-stack, "", @progbits
