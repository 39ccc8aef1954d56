/* Split virtqueues (virtio 1.x §2.7). Guest memory layout, little-endian:
 *   descriptor table: size x { addr u64, len u32, flags u16, next u16 }
 *   avail ring: flags u16, idx u16, ring[size] u16, used_event u16
 *   used ring:  flags u16, idx u16, ring[size] { id u32, len u32 }, avail_event u16
 * Every read of guest-controlled data is bounds-checked here. Every write
 * the device side makes into guest RAM is marked for dirty logging
 * (dirty_mark): the used ring and avail_event here, and a chain's
 * writable buffers when it is pushed (the devices fill them before, by
 * virtq_write_in or by reading into their iovecs). */
#include <errno.h>
#include <string.h>

#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/virtio.h"

#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
} __attribute__((packed));

static void *vq_ptr(const struct virtq *vq, uint64_t gpa, uint64_t len)
{
	return guest_ptr(vq->mem, gpa, len);
}

static bool vq_read16(const struct virtq *vq, uint64_t gpa, uint16_t *out)
{
	volatile uint16_t *p = vq_ptr(vq, gpa, 2);

	if (!p)
		return false;
	*out = *p;
	return true;
}

/* Appends one descriptor's buffer to elem, enforcing "readable before
 * writable" and the segment limit. */
static int vq_add_segment(const struct virtq *vq, struct virtq_elem *e,
			  const struct virtq_desc *d)
{
	bool writable = d->flags & VIRTQ_DESC_F_WRITE;
	void *host;

	if (e->out_num + e->in_num >= VIRTQ_MAX_SEGS)
		return err_set(-EINVAL, "descriptor chain longer than %d", VIRTQ_MAX_SEGS);
	if (!writable && e->in_num)
		return err_set(-EINVAL, "readable descriptor after a writable one");
	host = vq_ptr(vq, d->addr, d->len);
	if (!host && d->len)
		return err_set(-EINVAL, "descriptor buffer 0x%llx+%u outside guest RAM",
			       (unsigned long long)d->addr, d->len);
	/* The totals are 32-bit, as the used ring's length is: a chain
	 * past 4 GiB would wrap them and make a huge request look small. */
	if ((writable ? e->in_len : e->out_len) > UINT32_MAX - d->len)
		return err_set(-EINVAL, "descriptor chain of more than 4 GiB");
	e->iov[e->out_num + e->in_num] = (struct iovec){ host, d->len };
	if (writable) {
		e->in_num++;
		e->in_len += d->len;
	} else {
		e->out_num++;
		e->out_len += d->len;
	}
	return 0;
}

/* Walks an indirect table (§2.7.5.3): no nesting, no NEXT outside it. */
static int vq_walk_indirect(const struct virtq *vq, struct virtq_elem *e,
			    const struct virtq_desc *outer)
{
	const struct virtq_desc *table;
	unsigned int n = outer->len / sizeof(*table), i = 0, steps = 0;
	int ret;

	if (outer->len == 0 || outer->len % sizeof(*table) || n > VIRTQ_MAX_SEGS)
		return err_set(-EINVAL, "indirect table of %u bytes", outer->len);
	table = vq_ptr(vq, outer->addr, outer->len);
	if (!table)
		return err_set(-EINVAL, "indirect table outside guest RAM");
	for (;;) {
		struct virtq_desc d;

		memcpy(&d, &table[i], sizeof(d)); /* one read: the guest may change it */
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return err_set(-EINVAL, "nested indirect descriptor");
		ret = vq_add_segment(vq, e, &d);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= n || ++steps >= n)
			return err_set(-EINVAL, "indirect chain leaves its table or loops");
		i = d.next;
	}
}

static int vq_walk_chain(const struct virtq *vq, struct virtq_elem *e, uint16_t head)
{
	const struct virtq_desc *table = vq_ptr(vq, vq->desc_gpa, 16ULL * vq->size);
	unsigned int i = head, steps = 0;
	int ret;

	if (!table)
		return err_set(-EINVAL, "descriptor table outside guest RAM");
	for (;;) {
		struct virtq_desc d;

		if (i >= vq->size)
			return err_set(-EINVAL, "descriptor index %u >= queue size %u", i, vq->size);
		if (++steps > vq->size)
			return err_set(-EINVAL, "descriptor chain loops");
		memcpy(&d, &table[i], sizeof(d));
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			if (d.flags & VIRTQ_DESC_F_NEXT || e->out_num + e->in_num)
				return err_set(-EINVAL, "indirect descriptor inside a chain");
			return vq_walk_indirect(vq, e, &d);
		}
		ret = vq_add_segment(vq, e, &d);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		i = d.next;
	}
}

bool virtq_avail_idx(const struct virtq *vq, uint16_t *idx)
{
	return vq->enabled && vq_read16(vq, vq->avail_gpa + 2, idx);
}

bool virtq_interrupts_off(const struct virtq *vq)
{
	uint16_t flags;

	return vq->enabled && !vq->event_idx && vq_read16(vq, vq->avail_gpa, &flags) &&
	       (flags & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

int virtq_pop(struct virtq *vq, struct virtq_elem *elem)
{
	uint16_t avail_idx, head;

	if (!vq->enabled)
		return 0;
	if (!vq_read16(vq, vq->avail_gpa + 2, &avail_idx))
		return err_set(-EINVAL, "avail ring outside guest RAM");
	if (avail_idx == vq->last_avail && vq->event_idx) {
		/* Ask for a kick at the next buffer, then look again: the driver
		 * may have added one before it could see avail_event. */
		uint16_t *avail_event = vq_ptr(vq, vq->used_gpa + 4 + 8ULL * vq->size, 2);

		if (avail_event) {
			__atomic_store_n(avail_event, vq->last_avail, __ATOMIC_SEQ_CST);
			dirty_mark(vq->mem, avail_event, 2);
		}
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		vq_read16(vq, vq->avail_gpa + 2, &avail_idx);
	}
	if (avail_idx == vq->last_avail)
		return 0;
	if ((uint16_t)(avail_idx - vq->last_avail) > vq->size)
		return err_set(-EINVAL, "avail index moved by %u, more than the queue size",
			       (uint16_t)(avail_idx - vq->last_avail));
	/* Read the ring entry only after seeing the index (pairs with the
	 * driver's write barrier). */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (!vq_read16(vq, vq->avail_gpa + 4 + 2ULL * (vq->last_avail % vq->size), &head))
		return err_set(-EINVAL, "avail ring outside guest RAM");
	memset(elem, 0, offsetof(struct virtq_elem, iov));
	elem->head = head;
	vq->last_avail++;
	return vq_walk_chain(vq, elem, head) ? -EINVAL : 1;
}

void virtq_unpop(struct virtq *vq, unsigned int count)
{
	vq->last_avail = (uint16_t)(vq->last_avail - count);
}

/* All of the writable buffers, not only `written` bytes: a device may
 * have written more than it reports (a failed read's partial data). */
static void mark_pushed(const struct virtq *vq, const struct virtq_elem *elem,
			const uint32_t *slot, const uint16_t *idx)
{
	for (unsigned int i = elem->out_num; i < elem->out_num + elem->in_num; i++)
		dirty_mark_range(vq->mem, elem->iov[i].iov_base, elem->iov[i].iov_len);
	dirty_mark_range(vq->mem, slot, 8);
	dirty_mark_range(vq->mem, idx, 2);
}

void virtq_push(struct virtq *vq, const struct virtq_elem *elem, uint32_t written)
{
	uint32_t *slot = vq_ptr(vq, vq->used_gpa + 4 + 8ULL * (vq->used_idx % vq->size), 8);
	uint16_t *idx = vq_ptr(vq, vq->used_gpa + 2, 2);

	if (!slot || !idx)
		return; /* checked when the queue was enabled; the guest can't move it */
	slot[0] = elem->head;
	slot[1] = written;
	vq->used_idx++;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(idx, vq->used_idx, __ATOMIC_RELEASE);
	if (__builtin_expect(__atomic_load_n(&vq->mem->vmm_tracking, __ATOMIC_ACQUIRE), 0))
		mark_pushed(vq, elem, slot, idx);
}

bool virtq_needs_interrupt(struct virtq *vq)
{
	uint16_t flags = 0, used_event = 0, old = vq->signalled_used, now = vq->used_idx;

	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	vq->signalled_used = now;
	if (vq->event_idx) {
		if (!vq_read16(vq, vq->avail_gpa + 4 + 2ULL * vq->size, &used_event))
			return true;
		/* vring_need_event(): did used_idx step over used_event? */
		return (uint16_t)(now - used_event - 1) < (uint16_t)(now - old);
	}
	if (!vq_read16(vq, vq->avail_gpa, &flags))
		return true;
	return !(flags & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

static bool overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

bool virtq_rings_ok(const struct virtq *vq)
{
	uint64_t dlen = 16ULL * vq->size, alen = 6 + 2ULL * vq->size, ulen = 6 + 8ULL * vq->size;

	/* §2.7: descriptor table 16-byte aligned, avail ring 2, used ring 4;
	 * the ring code reads and writes them as aligned fields. */
	if ((vq->desc_gpa & 15) || (vq->avail_gpa & 1) || (vq->used_gpa & 3))
		return false;
	if (!vq_ptr(vq, vq->desc_gpa, dlen) || !vq_ptr(vq, vq->avail_gpa, alen) ||
	    !vq_ptr(vq, vq->used_gpa, ulen))
		return false;
	/* The used ring is what the device writes: on top of the avail ring,
	 * each push would offer the next chain, and a device loop serving
	 * until the ring is empty would never end (found by fuzz_virtio_blk). */
	return !overlap(vq->used_gpa, ulen, vq->avail_gpa, alen) &&
	       !overlap(vq->used_gpa, ulen, vq->desc_gpa, dlen);
}

static size_t iov_copy(const struct iovec *iov, unsigned int n, size_t skip, void *buf,
		       size_t len, bool to_iov)
{
	size_t done = 0;

	for (unsigned int i = 0; i < n && done < len; i++) {
		size_t seg = iov[i].iov_len, take;

		if (skip >= seg) {
			skip -= seg;
			continue;
		}
		take = seg - skip < len - done ? seg - skip : len - done;
		if (to_iov)
			memcpy((uint8_t *)iov[i].iov_base + skip, (uint8_t *)buf + done, take);
		else
			memcpy((uint8_t *)buf + done, (uint8_t *)iov[i].iov_base + skip, take);
		done += take;
		skip = 0;
	}
	return done;
}

size_t virtq_read_out(const struct virtq_elem *e, size_t skip, void *buf, size_t len)
{
	return iov_copy(e->iov, e->out_num, skip, buf, len, false);
}

size_t virtq_write_in(const struct virtq_elem *e, size_t skip, const void *buf, size_t len)
{
	return iov_copy(e->iov + e->out_num, e->in_num, skip, (void *)buf, len, true);
}
