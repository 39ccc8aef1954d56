/* Split virtqueues (virtio 1.x §2.7), driver side. Free descriptors are
 * chained through their next fields; a request's cookie is kept by head.
 * A kick is one MMIO write per batch, skipped when the device set
 * VRING_USED_F_NO_NOTIFY. */
#include "virtio.h"

#define WAIT_TICKS	10000000	/* 10 ms of KVM's 1 GHz APIC timer */

static void desc_fill(volatile struct vring_desc *d, const struct vq_buf *b, int k, int nout, int n)
{
	d->addr = (uintptr_t)b->addr;
	d->len = b->len;
	d->flags = (uint16_t)((k >= nout ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
}

/* A chain of n > 1 buffers in the head's indirect table: one ring slot. */
static uint16_t add_indirect(struct virtq *q, const struct vq_buf *bufs, int nout, int n)
{
	uint16_t head = q->free_head;
	volatile struct vring_desc *t = q->ind + (size_t)head * VQ_IND_MAX;

	for (int k = 0; k < n; k++) {
		desc_fill(&t[k], &bufs[k], k, nout, n);
		t[k].next = (uint16_t)(k + 1);
	}
	q->desc[head].addr = (uintptr_t)t;
	q->desc[head].len = (uint32_t)n * 16;
	q->desc[head].flags = VRING_DESC_F_INDIRECT;
	q->free_head = q->desc[head].next;
	q->num_free--;
	return head;
}

int vq_add(struct virtq *q, const struct vq_buf *bufs, int nout, int nin, void *cookie)
{
	int n = nout + nin;
	uint16_t head = q->free_head, i = head;

	if (n < 1 || !q->num_free)
		return -1;
	if (q->ind && n > 1 && n <= VQ_IND_MAX) {
		head = add_indirect(q, bufs, nout, n);
	} else {
		if (n > q->num_free)
			return -1;
		for (int k = 0; k < n; k++) {
			desc_fill(&q->desc[i], &bufs[k], k, nout, n);
			i = q->desc[i].next;
		}
		q->free_head = i;
		q->num_free = (uint16_t)(q->num_free - n);
	}
	q->cookie[head] = cookie;
	q->avail->ring[q->avail_idx % q->size] = head;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	q->avail->idx = ++q->avail_idx;
	q->pending++;
	return head;
}

void vq_kick(struct virtq *q)
{
	uint16_t added = q->pending;

	if (!added)
		return;
	q->pending = 0;
	/* avail->idx must be visible before we read used->flags or
	 * avail_event (§2.7.13) */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->event_idx) {
		/* avail_event sits after the used ring: notify only if the
		 * device asked for an index among the ones just added. */
		uint16_t ev = *(volatile uint16_t *)((volatile uint8_t *)q->used + 4 + 8u * q->size);

		if ((uint16_t)(q->avail_idx - ev - 1) >= added)
			return;
	} else if (q->used->flags & VRING_USED_F_NO_NOTIFY) {
		return;
	}
	*q->notify = q->index;
	q->kicks++;
}

bool vq_has_used(struct virtq *q)
{
	return __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) != q->last_used;
}

/* Next used buffer's cookie (and written length), its chain freed; NULL if none. */
void *vq_get(struct virtq *q, uint32_t *len)
{
	if (!vq_has_used(q))
		return NULL;
	volatile struct vring_used_elem *e = &q->used->ring[q->last_used % q->size];
	uint32_t id = e->id;
	void *cookie;

	if (len)
		*len = e->len;
	q->last_used++;
	if (id >= q->size)
		return NULL;		/* a broken device: nothing to free */
	cookie = q->cookie[id];
	/* Return the chain to the free list. */
	uint16_t i = (uint16_t)id, n = 1;

	while ((q->desc[i].flags & VRING_DESC_F_NEXT) && n < q->size) {
		i = q->desc[i].next;
		n++;
	}
	q->desc[i].next = q->free_head;
	q->free_head = (uint16_t)id;
	q->num_free = (uint16_t)(q->num_free + n);
	return cookie;
}

/* Waits until the used ring has an entry; false after timeout_ms. */
bool vq_wait(struct virtq *q, uint64_t timeout_ms)
{
	uint64_t end = clock_ns() + timeout_ms * 1000000;

	while (!vq_has_used(q)) {
		if (clock_ns() > end)
			return false;
		vq_sleep(q);
	}
	return true;
}

/* Polling: one pause. MSI-X: sleep until an interrupt (at most 10 ms)
 * unless the used ring already moved; with EVENT_IDX, used_event asks
 * for an interrupt on the next used entry first. */
void vq_sleep(struct virtq *q)
{
	if (!q->vector) {
		cpu_relax();
		return;
	}
	if (q->event_idx) {
		q->avail->ring[q->size] = q->last_used;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (vq_has_used(q))
			return;
	}
	sys_call(SYS_WAIT_IRQ, WAIT_TICKS, 0);
}

void *vq_get_wait(struct virtq *q, uint32_t *len, uint64_t timeout_ms)
{
	if (!vq_wait(q, timeout_ms))
		return NULL;
	return vq_get(q, len);
}
