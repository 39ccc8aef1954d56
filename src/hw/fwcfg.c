/* fw_cfg (include/vireo/fwcfg.h): a table of items, a selected item with
 * a read offset, and the DMA engine. Items are few (tens), so a linear
 * search is enough. The lock covers the selection and the table: port
 * accesses come from vCPU threads. */
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/dirty.h"
#include "vireo/fwcfg.h"
#include "vireo/log.h"
#include "vireo/state.h"

#define FWCFG_MAX_ITEMS (32 + FWCFG_MAX_FILES)

struct fwcfg_item {
	uint16_t key;
	uint8_t *data;
	uint64_t len;
	bool boot_only;   /* not rebuilt by a restore (fwcfg_set_boot_only()) */
};

struct fwcfg_file {
	char name[FWCFG_NAME_MAX];
	uint16_t key;
	uint32_t size;
};

struct fwcfg {
	pthread_mutex_t lock;
	const struct guest_memory *mem;
	struct fwcfg_item items[FWCFG_MAX_ITEMS];
	unsigned int nitems;
	struct fwcfg_file files[FWCFG_MAX_FILES];
	unsigned int nfiles;
	const struct fwcfg_item *cur; /* NULL: nothing (reads give zeros) */
	uint64_t offset;
	uint8_t dma_addr[8];          /* the address register, big endian */
	bool boot_only;               /* what fwcfg_put() adds now is */
	struct fwcfg_stats stats;
};

/* What a read of the DMA address register returns: "QEMU CFG". */
static const uint8_t dma_signature[8] = { 'Q', 'E', 'M', 'U', ' ', 'C', 'F', 'G' };

static struct fwcfg_item *fwcfg_find(struct fwcfg *f, uint16_t key)
{
	for (unsigned int i = 0; i < f->nitems; i++)
		if (f->items[i].key == key)
			return &f->items[i];
	return NULL;
}

/* Takes ownership of data (malloc'd). */
static int fwcfg_put(struct fwcfg *f, uint16_t key, uint8_t *data, uint64_t len)
{
	struct fwcfg_item *it;

	pthread_mutex_lock(&f->lock);
	it = fwcfg_find(f, key);
	if (!it && f->nitems == FWCFG_MAX_ITEMS) {
		pthread_mutex_unlock(&f->lock);
		free(data);
		return -ENOSPC;
	}
	if (!it)
		it = &f->items[f->nitems++];
	else
		free(it->data);
	/* The directory lists the boot-only files too: it is as volatile. */
	*it = (struct fwcfg_item){ key, data, len,
				   f->boot_only || (key == FW_CFG_FILE_DIR && it->boot_only) };
	if (f->cur == it)
		f->offset = 0;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

int fwcfg_add_item(struct fwcfg *f, uint16_t key, const void *data, uint64_t len)
{
	uint8_t *copy;

	if (key == FW_CFG_SIGNATURE || key == FW_CFG_ID || key == FW_CFG_FILE_DIR ||
	    len > FWCFG_ITEM_MAX)
		return -EINVAL;
	copy = malloc(len ? len : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, data, len);
	return fwcfg_put(f, key, copy, len);
}

int fwcfg_add_u16(struct fwcfg *f, uint16_t key, uint16_t v)
{
	uint16_t le = htole16(v);

	return fwcfg_add_item(f, key, &le, sizeof(le));
}

int fwcfg_add_u32(struct fwcfg *f, uint16_t key, uint32_t v)
{
	uint32_t le = htole32(v);

	return fwcfg_add_item(f, key, &le, sizeof(le));
}

int fwcfg_add_u64(struct fwcfg *f, uint16_t key, uint64_t v)
{
	uint64_t le = htole64(v);

	return fwcfg_add_item(f, key, &le, sizeof(le));
}

/* The directory (key 0x19): a big-endian count, then 64-byte entries
 * {be32 size, be16 key, be16 reserved, name[56]} sorted by name. */
static int fwcfg_rebuild_dir(struct fwcfg *f)
{
	uint64_t len = 4 + 64ULL * f->nfiles;
	uint8_t *dir = calloc(1, len);
	uint32_t count = htobe32(f->nfiles);

	if (!dir)
		return -ENOMEM;
	memcpy(dir, &count, 4);
	for (unsigned int i = 0; i < f->nfiles; i++) {
		uint8_t *e = dir + 4 + 64 * i;
		uint32_t size = htobe32(f->files[i].size);
		uint16_t key = htobe16(f->files[i].key);

		memcpy(e, &size, 4);
		memcpy(e + 4, &key, 2);
		memcpy(e + 8, f->files[i].name, FWCFG_NAME_MAX);
	}
	return fwcfg_put(f, FW_CFG_FILE_DIR, dir, len);
}

static void fwcfg_sort_files(struct fwcfg *f)
{
	for (unsigned int i = 1; i < f->nfiles; i++)
		for (unsigned int j = i; j > 0 &&
		     strcmp(f->files[j - 1].name, f->files[j].name) > 0; j--) {
			struct fwcfg_file t = f->files[j];

			f->files[j] = f->files[j - 1];
			f->files[j - 1] = t;
		}
}

int fwcfg_add_file(struct fwcfg *f, const char *name, const void *data, uint64_t len)
{
	struct fwcfg_file *file;
	uint16_t key = (uint16_t)(FW_CFG_FILE_FIRST + f->nfiles);
	int ret;

	if (strlen(name) >= FWCFG_NAME_MAX || !name[0] || len > UINT32_MAX)
		return -EINVAL;
	for (unsigned int i = 0; i < f->nfiles; i++)
		if (!strcmp(f->files[i].name, name))
			return -EEXIST;
	if (f->nfiles == FWCFG_MAX_FILES)
		return -ENOSPC;
	ret = fwcfg_add_item(f, key, data, len);
	if (ret)
		return ret;
	file = &f->files[f->nfiles++];
	memset(file, 0, sizeof(*file));
	strcpy(file->name, name);
	file->key = key;
	file->size = (uint32_t)len;
	fwcfg_sort_files(f);
	return fwcfg_rebuild_dir(f);
}

static void fwcfg_select_locked(struct fwcfg *f, uint16_t key)
{
	/* 0x4000 is the write channel bit: nothing here is writable. */
	f->cur = fwcfg_find(f, key & ~0x4000);
	f->offset = 0;
}

void fwcfg_select(struct fwcfg *f, uint16_t key)
{
	pthread_mutex_lock(&f->lock);
	fwcfg_select_locked(f, key);
	pthread_mutex_unlock(&f->lock);
}

uint8_t fwcfg_read_byte(struct fwcfg *f)
{
	uint8_t v = 0;

	pthread_mutex_lock(&f->lock);
	if (f->cur && f->offset < f->cur->len)
		v = f->cur->data[f->offset++];
	pthread_mutex_unlock(&f->lock);
	return v;
}

/* Copies the selected item's next `len` bytes to guest address gpa, zeros
 * past its end. The whole buffer must be guest RAM. */
static int fwcfg_dma_read(struct fwcfg *f, uint64_t gpa, uint32_t len)
{
	uint8_t *dst = len ? guest_ptr(f->mem, gpa, len) : NULL;
	uint64_t avail = f->cur && f->offset < f->cur->len ? f->cur->len - f->offset : 0;
	uint64_t n = avail < len ? avail : len;

	if (len && !dst)
		return -EFAULT;
	if (n)
		memcpy(dst, f->cur->data + f->offset, n);
	if (n < len)
		memset(dst + n, 0, len - n);
	if (len)
		dirty_mark(f->mem, dst, len);
	f->offset += n;
	return 0;
}

static int fwcfg_dma_run(struct fwcfg *f, uint32_t control, uint32_t len, uint64_t addr)
{
	uint64_t avail;

	if (control & FW_CFG_DMA_SELECT)
		fwcfg_select_locked(f, (uint16_t)(control >> 16));
	if (control & FW_CFG_DMA_READ)
		return fwcfg_dma_read(f, addr, len);
	if (control & FW_CFG_DMA_SKIP) {
		avail = f->cur && f->offset < f->cur->len ? f->cur->len - f->offset : 0;
		f->offset += avail < len ? avail : len;
		return 0;
	}
	if (control & FW_CFG_DMA_WRITE)
		return -EPERM;
	return 0;
}

void fwcfg_dma(struct fwcfg *f, uint64_t gpa)
{
	struct { uint32_t control, length; uint64_t address; } __attribute__((packed)) d;
	uint8_t *desc = f->mem ? guest_ptr(f->mem, gpa, sizeof(d)) : NULL;
	uint32_t done;
	int ret;

	pthread_mutex_lock(&f->lock);
	f->stats.dma_transfers++;
	if (!desc) {
		/* Nowhere to report the error: the guest waits on its own. */
		f->stats.dma_errors++;
		log_ratelimited("fw_cfg: DMA descriptor at 0x%llx is not guest RAM",
				(unsigned long long)gpa);
		goto out;
	}
	/* One copy: the guest may change the descriptor meanwhile. */
	memcpy(&d, desc, sizeof(d));
	ret = fwcfg_dma_run(f, be32toh(d.control), be32toh(d.length), be64toh(d.address));
	if (ret) {
		f->stats.dma_errors++;
		log_ratelimited("fw_cfg: DMA refused (control 0x%x, %u bytes at 0x%llx)",
				be32toh(d.control), be32toh(d.length),
				(unsigned long long)be64toh(d.address));
	}
	/* Last, so that a guest polling the control word sees the data (even
	 * when the transfer overwrote its own descriptor). */
	done = htobe32(ret ? FW_CFG_DMA_ERROR : 0);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(desc, &done, sizeof(done));
	dirty_mark(f->mem, desc, sizeof(done));
out:
	pthread_mutex_unlock(&f->lock);
}

void fwcfg_set_boot_only(struct fwcfg *f, bool on)
{
	pthread_mutex_lock(&f->lock);
	f->boot_only = on;
	pthread_mutex_unlock(&f->lock);
}

/* An item read to its end reads as no item at all (zeros, DMA skips and
 * reads past the end alike): saved as none, it needs no rebuilt twin. */
int fwcfg_save(struct fwcfg *f, struct state_writer *w)
{
	uint32_t key = FWCFG_KEY_NONE;
	uint64_t offset = 0;
	int ret = 0;

	pthread_mutex_lock(&f->lock);
	if (f->cur && f->offset < f->cur->len) {
		key = f->cur->key;
		offset = f->offset;
		if (f->cur->boot_only)
			ret = err_set(-EBUSY, "the firmware is reading fw_cfg item 0x%x (the "
				      "kernel it boots): try again once it has started", key);
	}
	state_begin(w, STATE_SEC_FWCFG, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, key);
	state_put_u64(w, offset);
	state_put_bytes(w, f->dma_addr, sizeof(f->dma_addr));
	state_end(w);
	pthread_mutex_unlock(&f->lock);
	return ret;
}

int fwcfg_restore(struct fwcfg *f, const struct state_reader *r)
{
	struct state_cursor c;
	uint8_t dma_addr[8];
	uint32_t key;
	uint64_t offset;
	const struct fwcfg_item *it = NULL;
	int ret = state_section(r, STATE_SEC_FWCFG, 0, &c);

	if (ret)
		return ret;
	key = state_get_u32(&c);
	offset = state_get_u64(&c);
	state_get_bytes(&c, dma_addr, sizeof(dma_addr));
	ret = state_done(&c);
	if (ret)
		return ret;
	pthread_mutex_lock(&f->lock);
	if (key != FWCFG_KEY_NONE) {
		it = fwcfg_find(f, (uint16_t)key);
		if (key > UINT16_MAX || !it || it->boot_only || offset >= it->len)
			ret = err_set(-EINVAL, "fw_cfg state: item 0x%x at offset %llu is not in "
				      "this machine", key, (unsigned long long)offset);
	} else if (offset) {
		ret = err_set(-EINVAL, "fw_cfg state: an offset without an item");
	}
	if (!ret) {
		f->cur = it;
		f->offset = offset;
		memcpy(f->dma_addr, dma_addr, sizeof(dma_addr));
	}
	pthread_mutex_unlock(&f->lock);
	return ret;
}

void fwcfg_get_stats(struct fwcfg *f, struct fwcfg_stats *out)
{
	pthread_mutex_lock(&f->lock);
	*out = f->stats;
	pthread_mutex_unlock(&f->lock);
}

struct fwcfg *fwcfg_create_model(const struct guest_memory *mem)
{
	static const char sig[4] = { 'Q', 'E', 'M', 'U' };
	uint32_t id = htole32(FW_CFG_VERSION_TRADITIONAL | (mem ? FW_CFG_VERSION_DMA : 0));
	struct fwcfg *f = calloc(1, sizeof(*f));
	uint8_t *s = malloc(sizeof(sig)), *i = malloc(sizeof(id));

	if (!f || !s || !i) {
		free(f), free(s), free(i);
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&f->lock, NULL);
	f->mem = mem;
	memcpy(s, sig, sizeof(sig));
	memcpy(i, &id, sizeof(id));
	fwcfg_put(f, FW_CFG_SIGNATURE, s, sizeof(sig));
	fwcfg_put(f, FW_CFG_ID, i, sizeof(id));
	if (fwcfg_rebuild_dir(f)) {
		fwcfg_destroy(f);
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	return f;
}

void fwcfg_destroy(struct fwcfg *f)
{
	if (!f)
		return;
	for (unsigned int i = 0; i < f->nitems; i++)
		free(f->items[i].data);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

static void fwcfg_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct fwcfg *f = opaque;

	if (offset == 0 && is_write)
		fwcfg_select(f, (uint16_t)bus_get(data, len));
	else if (offset == 1 && !is_write)
		for (uint32_t i = 0; i < len; i++)
			data[i] = fwcfg_read_byte(f);
	else if (!is_write)
		bus_put(data, len, 0);
}

/* The address register: the guest writes big-endian halves, high first;
 * a write that ends at its last byte (the low half) starts the transfer. */
static void fwcfg_dma_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
			 bool is_write)
{
	struct fwcfg *f = opaque;
	uint64_t addr;

	if (offset >= 8 || len > 8 - offset)
		return;
	if (!is_write) {
		memcpy(data, dma_signature + offset, len);
		return;
	}
	pthread_mutex_lock(&f->lock);
	memcpy(f->dma_addr + offset, data, len);
	memcpy(&addr, f->dma_addr, 8);
	if (offset + len == 8)
		memset(f->dma_addr, 0, 8);
	pthread_mutex_unlock(&f->lock);
	if (offset + len == 8)
		fwcfg_dma(f, be64toh(addr));
}

struct fwcfg *fwcfg_create(struct vm *vm)
{
	struct fwcfg *f = fwcfg_create_model(&vm->mem);
	int ret;

	if (!f)
		return NULL;
	ret = bus_register(&vm->pio, PORT_FWCFG_SELECTOR, 2, fwcfg_io, f, "fw_cfg");
	if (!ret)
		ret = bus_register(&vm->pio, PORT_FWCFG_DMA, 8, fwcfg_dma_io, f, "fw_cfg-dma");
	if (ret) {
		bus_unregister(&vm->pio, PORT_FWCFG_SELECTOR);
		fwcfg_destroy(f);
		err_set(ret, "cannot register the fw_cfg ports");
		return NULL;
	}
	return f;
}
