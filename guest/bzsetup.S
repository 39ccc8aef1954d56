/* The real-mode part of probe.bzimage (Documentation/arch/x86/boot.rst):
 * boot sector, setup header (protocol 2.12) and the setup code, 16 sectors
 * in all. The protected-mode part that follows it in the file is
 * probe64.elf's flat image; the header's sizes and code32_start come from
 * that ELF's symbols (bzsetup.ld, linked with --just-symbols).
 *
 * A loader with a 64-bit boot protocol (vireo) copies the header into its
 * own boot_params and enters startup_64 at 1 MiB + 0x200; this code never
 * runs there. A loader that runs the setup code (QEMU's linuxboot option ROM
 * under SeaBIOS) loads these 8 KiB at SEG:0 and jumps to SEG+0x20:0 in real
 * mode. The first 4 KiB are then our boot_params "zero page" in place: the
 * file keeps everything but the header zero, the loader has filled the
 * header fields it owns (cmd_line_ptr, ramdisk_image/size, ...), and the
 * setup code adds the BIOS memory map (INT 15h E820) before it switches to
 * protected mode and jumps to code32_start with %esi = SEG * 16. The code
 * sits above the zero page (at 0x1000), out of its way. */

#define SETUP_SECTS	15			/* + the boot sector: 8 KiB */
#define SETUP_END	((SETUP_SECTS + 1) * 512)
#define BP_E820_ENTRIES	0x1e8
#define BP_LOADFLAGS	0x211
#define BP_CODE32_START	0x214
#define BP_HEAP_END	0x224
#define BP_E820_TABLE	0x2d0
#define E820_MAX	128
#define CAN_USE_HEAP	0x80
#define LOADED_HIGH	0x01
#define XLF_KERNEL_64	0x01
#define SMAP		0x534d4150		/* "SMAP" */
#define BOOT_CS		0x10			/* __BOOT_CS, __BOOT_DS */
#define BOOT_DS		0x18

	.section .setup, "ax"
	.code16
	.globl	bz_boot
bz_boot:
	.org	0x1f1
	.byte	SETUP_SECTS			/* setup_sects */
	.word	0				/* root_flags */
	.long	bz_syssize			/* syssize: 16-byte units */
	.word	0				/* ram_size */
	.word	0xffff				/* vid_mode: normal */
	.word	0				/* root_dev */
	.word	0xaa55				/* boot_flag */
	.org	0x200
	.byte	0xeb, bz_jump - 1f		/* jump over the header */
1:	.ascii	"HdrS"
	.word	0x020c				/* version 2.12 */
	.long	0				/* realmode_swtch */
	.word	0x1000				/* start_sys_seg (obsolete) */
	.word	bz_version - 0x200		/* kernel_version */
	.byte	0				/* type_of_loader: the loader's */
	.byte	LOADED_HIGH			/* loadflags */
	.word	0x8000				/* setup_move_size */
	.long	startup_32			/* code32_start */
	.long	0, 0				/* ramdisk_image, ramdisk_size */
	.long	0				/* bootsect_kludge */
	.word	0				/* heap_end_ptr */
	.byte	0, 0				/* ext_loader_ver, ext_loader_type */
	.long	0				/* cmd_line_ptr */
	.long	0x7fffffff			/* initrd_addr_max */
	.long	0x1000				/* kernel_alignment */
	.byte	0				/* relocatable_kernel: no */
	.byte	12				/* min_alignment: 4 KiB */
	.word	XLF_KERNEL_64			/* xloadflags: startup_64 at +0x200 */
	.long	4095				/* cmdline_size */
	.long	0				/* hardware_subarch: PC */
	.quad	0				/* hardware_subarch_data */
	.long	0, 0				/* payload_offset, payload_length */
	.quad	0				/* setup_data */
	.quad	startup_32			/* pref_address */
	.long	bz_init_size			/* init_size */
	.long	0				/* handover_offset: no EFI */
	.org	0x268				/* end of the 2.12 header */
bz_jump:
	jmp	bz_setup			/* still at CS = SEG + 0x20 */

	.org	0x1000
bz_setup:
	cli
	cld
	mov	%cs, %ax
	sub	$0x20, %ax			/* SEG: boot_params */
	mov	%ax, %ds
	mov	%ax, %es
	/* The stack: the loader's if it set %ss = %ds (as QEMU does), else the
	 * top of the heap it granted, else 1 KiB past the setup code. */
	mov	%ss, %dx
	cmp	%ax, %dx
	mov	%sp, %dx
	je	2f
	mov	$SETUP_END + 0x400, %dx
	testb	$CAN_USE_HEAP, BP_LOADFLAGS
	jz	2f
	mov	BP_HEAP_END, %dx
	add	$0x200, %dx
2:	and	$~3, %dx
	jnz	3f
	mov	$0xfffc, %dx			/* the whole 64 KiB */
3:	mov	%ax, %ss
	movzwl	%dx, %esp
	push	%ax				/* %cs = SEG from here on */
	push	$bz_normalized
	lretw
bz_normalized:
	call	bz_e820
	/* Protected mode: our GDT at its linear address, then code32_start. */
	xor	%ebx, %ebx
	mov	%ds, %bx
	shl	$4, %ebx			/* boot_params, linear */
	lea	bz_gdt(%ebx), %eax
	mov	%eax, bz_gdt_desc + 2
	lea	bz_pm32(%ebx), %eax
	mov	%eax, bz_pm32_ptr
	lgdtl	bz_gdt_desc
	mov	%ebx, %esi
	mov	%cr0, %eax
	or	$1, %eax			/* PE */
	mov	%eax, %cr0
	ljmpl	*bz_pm32_ptr

/* BIOS memory map into boot_params.e820_table, as Linux's setup does; no
 * map (no BIOS: INT 15h vector 0, or E820 unsupported) leaves 0 entries. */
bz_e820:
	xor	%ax, %ax
	mov	%ax, %fs
	cmpl	$0, %fs:0x15 * 4
	je	9f
	xor	%ebx, %ebx			/* continuation */
	xor	%bp, %bp			/* entries */
	mov	$BP_E820_TABLE, %di
1:	mov	$0xe820, %eax
	mov	$20, %ecx
	mov	$SMAP, %edx
	push	%bp
	push	%di
	int	$0x15
	pop	%di
	pop	%bp
	jc	8f				/* unsupported, or past the end */
	cmp	$SMAP, %eax
	jne	8f
	cmp	$20, %cx
	jb	8f
	inc	%bp
	add	$20, %di
	cmp	$E820_MAX, %bp
	jae	8f
	test	%ebx, %ebx
	jnz	1b
8:	mov	%bp, %ax
	mov	%al, BP_E820_ENTRIES
9:	ret

	.code32
bz_pm32:					/* CS = __BOOT_CS, flat */
	mov	$BOOT_DS, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %fs
	mov	%eax, %gs
	mov	%eax, %ss
	add	%esi, %esp			/* same stack, flat */
	mov	BP_CODE32_START(%esi), %eax
	xor	%ebx, %ebx			/* the protocol wants %ebx, %ebp, %edi zero */
	xor	%ebp, %ebp
	xor	%edi, %edi
	jmp	*%eax

	.balign	8
bz_gdt:
	.quad	0, 0
	.quad	0x00cf9a000000ffff		/* __BOOT_CS: 4 GiB flat code */
	.quad	0x00cf92000000ffff		/* __BOOT_DS: 4 GiB flat data */
bz_gdt_end:
bz_gdt_desc:
	.word	bz_gdt_end - bz_gdt - 1
	.long	0				/* linear base, filled in */
bz_pm32_ptr:
	.long	0				/* bz_pm32, linear, filled in */
	.word	BOOT_CS
bz_version:
	.asciz	"vireo-probe"
	.org	SETUP_END
	.section .note.GNU-stack, "", @progbits
