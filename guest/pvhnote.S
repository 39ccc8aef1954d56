/* Xen PVH entry note: 32-bit physical entry point. Emitted as 8 bytes (as
 * Linux does) so both 4- and 8-byte readers see the right value. Its own
 * object, so that probe64.elf and probe.bzimage are linked without it. */
	.section .note.Xen, "a", @note
	.balign 4
	.long	4, 8, 18			/* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign 4
	.quad	pvh_start
	.section .note.GNU-stack, "", @progbits
