/* The set of host clusters that hold qcow2 tables (L2 tables, refcount
 * blocks, snapshot L1 copies), kept for overlap checks: a corrupt or hostile
 * image whose L2 entry points a guest cluster at metadata, or whose refcounts
 * say a table is free, must not make a guest write or an allocation
 * overwrite that table (QEMU calls these overlap checks). Header, active L1,
 * refcount table and snapshot table are checked by range instead. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "vireo/log.h"

#define DELETED UINT64_MAX

static uint64_t slot(uint64_t key, size_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return key & (cap - 1);
}

static int grow(struct qcow2_mset *m)
{
	struct qcow2_mset n = { .cap = m->cap ? m->cap * 2 : 1024 };

	n.slots = calloc(n.cap, sizeof(uint64_t));
	if (!n.slots)
		return err_set(-ENOMEM, "out of memory");
	for (size_t i = 0; i < m->cap; i++) {
		uint64_t k = m->slots[i];

		if (k && k != DELETED) {
			size_t j = slot(k, n.cap);

			while (n.slots[j])
				j = (j + 1) & (n.cap - 1);
			n.slots[j] = k;
			n.n++;
		}
	}
	free(m->slots);
	n.used = n.n;	/* tombstones are gone */
	*m = n;
	return 0;
}

static size_t find(const struct qcow2_mset *m, uint64_t key, bool *found)
{
	size_t j = slot(key, m->cap), tomb = SIZE_MAX;

	while (m->slots[j]) {
		if (m->slots[j] == key) {
			*found = true;
			return j;
		}
		if (m->slots[j] == DELETED && tomb == SIZE_MAX)
			tomb = j;
		j = (j + 1) & (m->cap - 1);
	}
	*found = false;
	return tomb != SIZE_MAX ? tomb : j;
}

int qcow2_meta_add(struct qcow2 *s, uint64_t off)
{
	struct qcow2_mset *m = &s->meta;
	uint64_t key = off / s->cluster_size + 1;
	bool found;
	size_t j;
	int ret;

	if (m->used * 2 >= m->cap && (ret = grow(m)))
		return ret;
	j = find(m, key, &found);
	if (!found) {
		if (!m->slots[j])
			m->used++;
		m->slots[j] = key;
		m->n++;
	}
	return 0;
}

void qcow2_meta_del(struct qcow2 *s, uint64_t c)
{
	bool found;
	size_t j;

	if (!s->meta.cap)
		return;
	j = find(&s->meta, c + 1, &found);
	if (found) {
		s->meta.slots[j] = DELETED;
		s->meta.n--;
	}
}

bool qcow2_meta_has(struct qcow2 *s, uint64_t c)
{
	bool found;

	if (!s->meta.cap)
		return false;
	find(&s->meta, c + 1, &found);
	return found;
}

void qcow2_meta_free(struct qcow2 *s)
{
	free(s->meta.slots);
	memset(&s->meta, 0, sizeof(s->meta));
}

/* (Re)builds the set from the active L1 table, the refcount table and the
 * snapshots' L1 copies. */
int qcow2_meta_init(struct qcow2 *s)
{
	int ret = 0;

	qcow2_meta_free(s);
	for (uint32_t i = 0; !ret && i < s->l1_size; i++)
		if (s->l1[i] & QCOW2_OFFSET_MASK)
			ret = qcow2_meta_add(s, s->l1[i] & QCOW2_OFFSET_MASK);
	for (uint64_t i = 0; !ret && i < s->rt_size; i++)
		if (s->rt[i] & ~511ull)
			ret = qcow2_meta_add(s, s->rt[i] & ~511ull);
	for (uint32_t i = 0; !ret && i < s->nr_snaps; i++)
		for (uint64_t o = 0; !ret && o < s->snaps[i].l1_size * 8ull; o += s->cluster_size)
			ret = qcow2_meta_add(s, s->snaps[i].l1_table_offset + o);
	return ret;
}

static bool in_range(uint64_t off, uint64_t cs, uint64_t start, uint64_t len)
{
	return len && off + cs > start && off < start + len;
}

bool qcow2_is_metadata(struct qcow2 *s, uint64_t c)
{
	uint64_t off = c * s->cluster_size, cs = s->cluster_size;

	return c == 0 || qcow2_meta_has(s, c) ||
	       in_range(off, cs, s->h.l1_table_offset, s->l1_size * 8ull) ||
	       in_range(off, cs, s->h.refcount_table_offset, s->rt_size * 8) ||
	       (s->nr_snaps && in_range(off, cs, s->h.snapshots_offset, s->snap_bytes));
}

int qcow2_check_data_write(struct qcow2 *s, uint64_t host, uint64_t len)
{
	for (uint64_t c = host / s->cluster_size; c * s->cluster_size < host + len; c++)
		if (qcow2_is_metadata(s, c))
			return qcow2_corrupt(s, "guest data cluster %#llx overlaps metadata",
					     (unsigned long long)(c * s->cluster_size));
	return 0;
}
