/* The machine description, as snapshots record it (include/vireo/machine.h). */
#include <errno.h>
#include <string.h>

#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

static void put_str(struct state_writer *w, const char *s)
{
	state_put_blob(w, s, strlen(s));
}

static void save_devices(const struct machine_config *m, struct state_writer *w)
{
	for (unsigned int i = 0; i < m->ndisks; i++) {
		const struct machine_disk *d = &m->disks[i];

		put_str(w, d->path);
		put_str(w, d->format);
		put_str(w, d->serial);
		state_put_u8(w, d->readonly);
		state_put_u64(w, d->bps);
		state_put_u64(w, d->iops);
		state_put_u32(w, (uint32_t)d->cache);
		state_put_u32(w, (uint32_t)d->aio);
	}
	for (unsigned int i = 0; i < m->nnics; i++) {
		const struct machine_nic *n = &m->nics[i];

		put_str(w, n->tap);
		state_put_bytes(w, n->mac, 6);
		state_put_u8(w, n->mac_set);
		state_put_u32(w, n->mtu);
		state_put_u64(w, n->rx_bps);
		state_put_u64(w, n->tx_bps);
	}
	if (m->rng)
		state_put_u64(w, m->rng_bps);
	if (m->balloon)
		state_put_u64(w, m->balloon_target);
	for (unsigned int i = 0; i < m->ndisks && i < MACHINE_MAX_DISKS; i++)
		state_put_u32(w, m->disks[i].queues);
	state_put_u8(w, m->firmware);
	state_put_u8(w, m->firmware_kernel);
}

void machine_save(const struct machine_config *m, struct state_writer *w)
{
	state_begin(w, STATE_SEC_MACHINE, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, m->ncpus);
	state_put_u64(w, m->mem_size);
	state_put_u8(w, m->hugepages);
	state_put_u8(w, m->debug_exit);
	state_put_u32(w, m->ndisks);
	state_put_u32(w, m->nnics);
	state_put_u8(w, m->rng);
	state_put_u8(w, m->balloon);
	save_devices(m, w);
	state_end(w);
}

/* A string blob that fits `size` with its NUL and holds none. */
static void get_str(struct state_cursor *c, char *out, size_t size)
{
	size_t n = state_get_blob_max(c, out, size - 1);

	out[n] = 0;
	if (strlen(out) != n)
		c->bad = true;
}

/* Appended after the rest, so that older files (one queue per disk, and
 * nothing after the devices) still load. */
static void load_queues(struct state_cursor *c, struct machine_config *m)
{
	bool absent = c->pos == c->len;

	for (unsigned int i = 0; i < m->ndisks && !c->bad; i++) {
		struct machine_disk *d = &m->disks[i];

		d->queues = absent ? 1 : state_get_u32(c);
		if (!d->queues || d->queues > VIRTIO_BLK_MAX_QUEUES)
			c->bad = true;
	}
}

static void load_devices(struct state_cursor *c, struct machine_config *m)
{
	for (unsigned int i = 0; i < m->ndisks && !c->bad; i++) {
		struct machine_disk *d = &m->disks[i];

		get_str(c, d->path, sizeof(d->path));
		get_str(c, d->format, sizeof(d->format));
		get_str(c, d->serial, sizeof(d->serial));
		d->readonly = state_get_u8(c) != 0;
		d->bps = state_get_u64(c);
		d->iops = state_get_u64(c);
		d->cache = (int)state_get_u32(c);
		d->aio = (int)state_get_u32(c);
		if (!d->path[0] || d->cache < 0 || d->cache > BLOCK_CACHE_UNSAFE || d->aio < 0 ||
		    d->aio > BLOCK_AIO_THREADS)
			c->bad = true;
	}
	for (unsigned int i = 0; i < m->nnics && !c->bad; i++) {
		struct machine_nic *n = &m->nics[i];
		uint32_t mtu;

		get_str(c, n->tap, sizeof(n->tap));
		state_get_bytes(c, n->mac, 6);
		n->mac_set = state_get_u8(c) != 0;
		mtu = state_get_u32(c);
		n->mtu = (uint16_t)mtu;
		n->rx_bps = state_get_u64(c);
		n->tx_bps = state_get_u64(c);
		if (mtu > 0xffff)
			c->bad = true;
	}
	if (m->rng)
		m->rng_bps = state_get_u64(c);
	if (m->balloon)
		m->balloon_target = state_get_u64(c);
	load_queues(c, m);
	/* Appended too: files from before firmware VMs could be saved. */
	m->firmware = m->firmware_kernel = false;
	if (c->pos == c->len || c->bad)
		return;
	m->firmware = state_get_u8(c) != 0;
	m->firmware_kernel = state_get_u8(c) != 0;
	if (m->firmware_kernel && !m->firmware)
		c->bad = true;
}

int machine_load(const struct state_reader *r, struct machine_config *m)
{
	struct state_cursor c;
	int ret = state_section(r, STATE_SEC_MACHINE, 0, &c);

	if (ret)
		return ret;
	m->ncpus = state_get_u32(&c);
	m->mem_size = state_get_u64(&c);
	m->hugepages = state_get_u8(&c) != 0;
	m->debug_exit = state_get_u8(&c) != 0;
	m->ndisks = state_get_u32(&c);
	m->nnics = state_get_u32(&c);
	m->rng = state_get_u8(&c) != 0;
	m->balloon = state_get_u8(&c) != 0;
	if (m->ndisks > MACHINE_MAX_DISKS || m->nnics > MACHINE_MAX_NICS)
		return err_set(-EINVAL, "state file: %u disks and %u vNICs (at most %d and %d)",
			       m->ndisks, m->nnics, MACHINE_MAX_DISKS, MACHINE_MAX_NICS);
	load_devices(&c, m);
	ret = state_done(&c);
	if (ret)
		return ret;
	if (m->ncpus != state_reader_header(r)->ncpus ||
	    m->mem_size != state_reader_header(r)->mem_size)
		return err_set(-EINVAL, "state file: the machine section disagrees with the header");
	return 0;
}
