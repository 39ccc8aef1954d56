/* ELF64 kernels: PT_LOAD segments at their physical addresses, and the Xen
 * PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) when the kernel has one. Every
 * header field is checked against the file size and guest RAM. */
#include <elf.h>
#include <errno.h>
#include <string.h>

#include "vireo/boot.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18

static bool in_file(const struct kernel_image *img, uint64_t off, uint64_t len)
{
	return off <= img->size && len <= img->size - off;
}

static int elf_check_header(const struct kernel_image *img, const Elf64_Ehdr *eh)
{
	if (img->size < sizeof(*eh) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_ident[EI_DATA] != ELFDATA2LSB || eh->e_machine != EM_X86_64)
		return err_set(-ENOEXEC, "%s: not a 64-bit x86 ELF kernel", img->path);
	if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 ||
	    !in_file(img, eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr)))
		return err_set(-ENOEXEC, "%s: bad ELF program headers", img->path);
	return 0;
}

/* Scans one PT_NOTE segment for the PVH entry; 0 if absent. */
static uint64_t elf_find_pvh_note(const struct kernel_image *img, const Elf64_Phdr *ph)
{
	uint64_t off = ph->p_offset, end = ph->p_offset + ph->p_filesz;

	while (off + sizeof(Elf64_Nhdr) <= end) {
		const Elf64_Nhdr *nh = (const void *)(img->data + off);
		uint64_t name_off = off + sizeof(*nh);
		uint64_t desc_off = name_off + ((nh->n_namesz + 3ULL) & ~3ULL);
		uint64_t next = desc_off + ((nh->n_descsz + 3ULL) & ~3ULL);

		if (next > end)
			break;
		if (nh->n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh->n_namesz == 4 &&
		    !memcmp(img->data + name_off, "Xen", 4) && nh->n_descsz >= 4) {
			uint64_t entry = 0;

			memcpy(&entry, img->data + desc_off, nh->n_descsz >= 8 ? 8 : 4);
			return entry;
		}
		off = next;
	}
	return 0;
}

static int elf_load_segment(struct vm *vm, const struct kernel_image *img, const Elf64_Phdr *ph)
{
	uint8_t *dst;

	if (ph->p_filesz > ph->p_memsz || !in_file(img, ph->p_offset, ph->p_filesz))
		return err_set(-ENOEXEC, "%s: ELF segment outside the file", img->path);
	if (ph->p_paddr < LAYOUT_HIGH_RAM_START)
		return err_set(-ENOEXEC, "%s: ELF segment at 0x%llx, below 1 MiB", img->path,
			       (unsigned long long)ph->p_paddr);
	dst = guest_ptr(&vm->mem, ph->p_paddr, ph->p_memsz);
	if (!dst)
		return err_set(-ENOSPC, "%s: ELF segment at 0x%llx (+0x%llx) does not fit in guest RAM",
			       img->path, (unsigned long long)ph->p_paddr,
			       (unsigned long long)ph->p_memsz);
	memcpy(dst, img->data + ph->p_offset, ph->p_filesz);
	/* The rest (.bss) is left alone: guest RAM is a fresh memfd, all zero,
	 * and touching it would only fault in pages the guest may never use. */
	return 0;
}

int elf_load(struct vm *vm, const struct kernel_image *img, uint64_t *entry,
	     uint64_t *pvh_entry, uint64_t *end)
{
	const Elf64_Ehdr *eh = (const void *)img->data;
	const Elf64_Phdr *phdrs;
	bool loaded = false;
	int ret = elf_check_header(img, eh);

	if (ret)
		return ret;
	phdrs = (const void *)(img->data + eh->e_phoff);
	*entry = 0;
	*pvh_entry = 0;
	*end = 0;
	for (unsigned int i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = &phdrs[i];

		if (ph->p_type == PT_NOTE && in_file(img, ph->p_offset, ph->p_filesz) && !*pvh_entry)
			*pvh_entry = elf_find_pvh_note(img, ph);
		if (ph->p_type != PT_LOAD || ph->p_memsz == 0)
			continue;
		ret = elf_load_segment(vm, img, ph);
		if (ret)
			return ret;
		loaded = true;
		if (ph->p_paddr + ph->p_memsz > *end)
			*end = ph->p_paddr + ph->p_memsz;
		/* The entry is a virtual address; translate it through its segment. */
		if (eh->e_entry >= ph->p_vaddr && eh->e_entry - ph->p_vaddr < ph->p_memsz)
			*entry = eh->e_entry - ph->p_vaddr + ph->p_paddr;
	}
	if (!loaded)
		return err_set(-ENOEXEC, "%s: ELF file has nothing to load", img->path);
	if (!*entry && !*pvh_entry)
		return err_set(-ENOEXEC, "%s: ELF entry point is outside its segments", img->path);
	return 0;
}
