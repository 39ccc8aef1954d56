/* virtio-pci modern transport (virtio 1.x §4.1) on PCI bus 0 through ECAM.
 *
 * No firmware sets up PCI for the probe guest (QEMU microvm has none), so
 * memory BARs still at 0 are sized and assigned here from the 32-bit MMIO
 * window: 0xc0000000-0xdfffffff on both vireo and QEMU microvm,pcie=on
 * (override with pci_mmio=ADDR). BARs a VMM pre-assigned are kept and the
 * window cursor starts above them. I/O BARs are left alone (I/O decoding
 * stays off): only the modern, memory-mapped interface is used.
 *
 * Interrupts: irq=msix programs one MSI-X vector per queue to this CPU's
 * x2APIC (address 0xFEE00000 | apic_id << 12, data = IDT vector); the
 * guest sleeps in SYS_WAIT_IRQ until the used ring moves. irq=poll (the
 * default) leaves MSI-X off, sets VRING_AVAIL_F_NO_INTERRUPT and spins on
 * the used index in RAM, which costs no exits. */
#include "virtio.h"

#define PCI_COMMAND		0x04
#define PCI_CMD_MEM		0x02
#define PCI_CMD_MASTER		0x04
#define PCI_CMD_INTX_OFF	0x400
#define PCI_STATUS_CAPS		0x10
#define PCI_CAP_PTR		0x34
#define PCI_CAP_MSIX		0x11
#define PCI_CAP_VNDR		0x09

enum { CAP_COMMON = 1, CAP_NOTIFY = 2, CAP_ISR = 3, CAP_DEVICE = 4 };

/* common configuration structure offsets (§4.1.4.3) */
#define CC_DFSELECT	0x00
#define CC_DF		0x04
#define CC_GFSELECT	0x08
#define CC_GF		0x0c
#define CC_MSIX		0x10
#define CC_NUMQ		0x12
#define CC_STATUS	0x14
#define CC_GEN		0x15
#define CC_Q_SELECT	0x16
#define CC_Q_SIZE	0x18
#define CC_Q_MSIX	0x1a
#define CC_Q_ENABLE	0x1c
#define CC_Q_NOFF	0x1e
#define CC_Q_DESC	0x20
#define CC_Q_AVAIL	0x28
#define CC_Q_USED	0x30

#define VEC_VIRTIO_BASE	0x40		/* one IDT vector per queue from here */
#define MAX_VDEVS	16

bool virtio_use_msix, virtio_use_event_idx, virtio_use_indirect;
static struct vdev vdevs[MAX_VDEVS];
static int nvdevs;
static uint64_t mmio_next, mmio_end;
static uint8_t next_vector = VEC_VIRTIO_BASE;
static uint32_t bsp_apic_id;

/* ---- ECAM ---- */

static volatile uint8_t *ecam(unsigned slot, unsigned fn, unsigned off)
{
	return (volatile uint8_t *)(uintptr_t)(acpi.ecam_base +
		((uint64_t)acpi.bus_start << 20 | slot << 15 | fn << 12 | off));
}
static uint32_t pci_r32(struct vdev *d, unsigned off) { return *(volatile uint32_t *)ecam(d->slot, d->fn, off); }
static uint16_t pci_r16(struct vdev *d, unsigned off) { return *(volatile uint16_t *)ecam(d->slot, d->fn, off); }
static uint8_t pci_r8(struct vdev *d, unsigned off) { return *ecam(d->slot, d->fn, off); }
static void pci_w32(struct vdev *d, unsigned off, uint32_t v) { *(volatile uint32_t *)ecam(d->slot, d->fn, off) = v; }
static void pci_w16(struct vdev *d, unsigned off, uint16_t v) { *(volatile uint16_t *)ecam(d->slot, d->fn, off) = v; }

/* ---- DMA memory ---- */

extern char __image_end[];
static uint64_t dma_next, dma_saved;

void *dma_alloc(size_t size, size_t align)
{
	if (!dma_next)
		dma_next = ((uintptr_t)__image_end + 0x1fffff) & ~0x1fffffull;
	uint64_t a = (dma_next + align - 1) & ~(uint64_t)(align - 1);

	if (a + size > ram_end()) {
		probe_printf("PROBE error=out-of-memory size=%lu\n", (uint64_t)size);
		probe_exit(1);
	}
	dma_next = a + size;
	probe_memset((void *)(uintptr_t)a, 0, size);
	return (void *)(uintptr_t)a;
}

void dma_mark(void) { dma_saved = dma_next; }
void dma_release(void) { dma_next = dma_saved; }

/* ---- BARs ---- */

/* Size of the memory BAR at config offset off (low 32 bits of a 64-bit
 * one), decoding off meanwhile; 0 if not implemented. */
static uint64_t bar_size(unsigned slot, unsigned fn, unsigned off)
{
	volatile uint16_t *cmd = (volatile uint16_t *)ecam(slot, fn, PCI_COMMAND);
	volatile uint32_t *r = (volatile uint32_t *)ecam(slot, fn, off);
	uint16_t saved = *cmd;
	uint32_t orig = *r, mask;

	*cmd = saved & (uint16_t)~PCI_CMD_MEM;
	*r = 0xffffffff;
	mask = *r & ~0xfu;
	*r = orig;
	*cmd = saved;
	return mask ? (uint64_t)(uint32_t)(~mask + 1) : 0;
}

/* Moves the window cursor above every memory BAR some VMM already placed
 * in the window. */
static void window_skip_assigned(unsigned slot, unsigned fn)
{
	uint8_t hdr = *ecam(slot, fn, 0xe) & 0x7f;

	for (unsigned b = 0; b < (hdr == 1 ? 2u : hdr == 0 ? 6u : 0u); b++) {
		unsigned off = 0x10 + 4 * b;
		volatile uint32_t *r = (volatile uint32_t *)ecam(slot, fn, off);
		uint32_t v = *r;
		uint64_t base = v & ~0xfull;

		if (v & 1)
			continue;
		if ((v & 6) == 4)
			base |= (uint64_t)r[1] << 32, b++;
		if (base >= mmio_next && base < mmio_end) {
			uint64_t size = bar_size(slot, fn, off);

			mmio_next = base + (size ? size : 4096);
		}
	}
}

static uint64_t bar_base(struct vdev *d, unsigned b)
{
	uint32_t lo = pci_r32(d, 0x10 + 4 * b);
	uint64_t base = lo & ~0xfull;

	if ((lo & 6) == 4 && b < 5)
		base |= (uint64_t)pci_r32(d, 0x14 + 4 * b) << 32;
	return base;
}

/* Sizes and places every unassigned memory BAR (decoding is off here). */
static void bars_assign(struct vdev *d)
{
	for (unsigned b = 0; b < 6; b++) {
		unsigned off = 0x10 + 4 * b;
		uint32_t orig = pci_r32(d, off);
		bool is64 = (orig & 7) == 4;

		if (orig & 1)
			continue;			/* I/O BAR: unused */
		if (bar_base(d, b)) {
			b += is64;
			continue;
		}
		uint64_t size = bar_size(d->slot, d->fn, off);

		if (!size) {
			b += is64;
			continue;
		}
		uint64_t a = (mmio_next + size - 1) & ~(size - 1);

		if (a + size > mmio_end) {
			probe_printf("PROBE virtio_error=mmio-window-full dev=%02x\n", d->slot);
			b += is64;
			continue;
		}
		mmio_next = a + size;
		pci_w32(d, off, (uint32_t)a | (orig & 0xf));
		if (is64)
			pci_w32(d, off + 4, 0), b++;
	}
}

/* ---- capabilities ---- */

static volatile uint8_t *cap_addr(struct vdev *d, unsigned cap)
{
	unsigned bar = pci_r8(d, cap + 4);
	uint32_t off = pci_r32(d, cap + 8);

	if (bar > 5)
		return NULL;
	return (volatile uint8_t *)(uintptr_t)(bar_base(d, bar) + off);
}

static void caps_walk(struct vdev *d)
{
	if (!(pci_r16(d, 6) & PCI_STATUS_CAPS))
		return;
	for (unsigned p = pci_r8(d, PCI_CAP_PTR) & 0xfc, n = 0; p && n < 48; n++) {
		uint8_t id = pci_r8(d, p);

		if (id == PCI_CAP_VNDR) {
			uint8_t type = pci_r8(d, p + 3);
			volatile uint8_t *a = cap_addr(d, p);

			if (type == CAP_COMMON && !d->common)
				d->common = a;
			else if (type == CAP_NOTIFY && !d->notify_base) {
				d->notify_base = a;
				d->notify_mult = pci_r32(d, p + 16);
			} else if (type == CAP_ISR && !d->isr)
				d->isr = a;
			else if (type == CAP_DEVICE && !d->cfg) {
				d->cfg = a;
				d->cfg_len = pci_r32(d, p + 12);
			}
		} else if (id == PCI_CAP_MSIX) {
			uint16_t ctl = pci_r16(d, p + 2);
			uint32_t tbl = pci_r32(d, p + 4);

			d->msix_count = (ctl & 0x7ff) + 1;
			d->msix_table = (volatile uint32_t *)(uintptr_t)
				(bar_base(d, tbl & 7) + (tbl & ~7u));
			d->msix_cap = (uint8_t)p;
		}
		p = pci_r8(d, p + 1) & 0xfc;
	}
}

/* ---- discovery ---- */

static void probe_function(unsigned slot, unsigned fn, uint32_t id)
{
	uint16_t dev_id = id >> 16, type;
	struct vdev *d;

	if ((id & 0xffff) != VIRTIO_VENDOR || dev_id < 0x1000 || dev_id > 0x107f)
		return;
	if (nvdevs >= MAX_VDEVS)
		return;
	d = &vdevs[nvdevs];
	d->slot = (uint8_t)slot;
	d->fn = (uint8_t)fn;
	d->pci_id = dev_id;
	if (dev_id >= 0x1040)
		type = dev_id - 0x1040;
	else				/* transitional: subsystem id is the type */
		type = pci_r16(d, 0x2e);
	d->type = type;
	pci_w16(d, PCI_COMMAND, 0);
	bars_assign(d);
	pci_w16(d, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER | PCI_CMD_INTX_OFF);
	caps_walk(d);
	if (!d->common || !d->notify_base) {
		probe_printf("PROBE virtio_error=no-modern-caps dev=%02x:%02x.%u\n", 0, slot, fn);
		return;
	}
	nvdevs++;
}

static void pci_scan(void)
{
	for (int pass = 0; pass < 2; pass++) {
		for (unsigned slot = 0; slot < 32; slot++) {
			for (unsigned fn = 0; fn < 8; fn++) {
				uint32_t id = *(volatile uint32_t *)ecam(slot, fn, 0);

				if ((id & 0xffff) == 0xffff) {
					if (fn == 0)
						break;
					continue;
				}
				if (pass == 0)
					window_skip_assigned(slot, fn);
				else
					probe_function(slot, fn, id);
				if (fn == 0 && !(*ecam(slot, 0, 0xe) & 0x80))
					break;
			}
		}
	}
}

void virtio_setup(void)
{
	char v[64];

	if (cmdline_get("ecam", v)) {
		acpi.ecam_base = parse_u64(v, 0);
		acpi.bus_start = 0;
	}
	mmio_next = cmdline_u64("pci_mmio", 0xc0000000);
	mmio_end = mmio_next + 0x20000000;
	virtio_use_msix = cmdline_get("irq", v) && !probe_memcmp(v, "msix", 5);
	virtio_use_event_idx = cmdline_u64("event_idx", 0);
	virtio_use_indirect = cmdline_u64("indirect", 0);
	if (!acpi.ecam_base) {
		probe_printf("PROBE virtio_error=no-ecam\n");
		probe_exit(1);
	}
	if (virtio_use_msix) {
		if (x2apic_enable()) {
			probe_printf("PROBE error=no-x2apic\n");
			probe_exit(1);
		}
		bsp_apic_id = x2apic_id();
		/* SeaBIOS (-M q35/pc) leaves the 8259s on with IRQ0 at vector 8:
		 * mask them, interrupts come only through MSI-X. */
		outb(0x21, 0xff);
		outb(0xa1, 0xff);
	}
	pci_scan();
}

struct vdev *virtio_find(uint16_t type, int nth)
{
	for (int i = 0; i < nvdevs; i++)
		if (vdevs[i].type == type && nth-- == 0)
			return &vdevs[i];
	return NULL;
}

/* ---- common config ---- */

static volatile uint8_t *cc8(struct vdev *d, unsigned off) { return d->common + off; }
static volatile uint16_t *cc16(struct vdev *d, unsigned off) { return (volatile uint16_t *)(d->common + off); }
static volatile uint32_t *cc32(struct vdev *d, unsigned off) { return (volatile uint32_t *)(d->common + off); }

static void cc_w64(struct vdev *d, unsigned off, uint64_t v)
{
	*cc32(d, off) = (uint32_t)v;
	*cc32(d, off + 4) = (uint32_t)(v >> 32);
}

uint8_t vdev_status(struct vdev *d) { return *cc8(d, CC_STATUS); }

uint8_t cfg_r8(struct vdev *d, uint32_t off) { return d->cfg[off]; }
uint16_t cfg_r16(struct vdev *d, uint32_t off) { return *(volatile uint16_t *)(d->cfg + off); }
uint32_t cfg_r32(struct vdev *d, uint32_t off) { return *(volatile uint32_t *)(d->cfg + off); }
void cfg_w32(struct vdev *d, uint32_t off, uint32_t v) { *(volatile uint32_t *)(d->cfg + off) = v; }

/* 64-bit fields may tear across two reads: retry on a generation change. */
uint64_t cfg_r64(struct vdev *d, uint32_t off)
{
	uint8_t gen;
	uint64_t v;

	do {
		gen = *cc8(d, CC_GEN);
		v = cfg_r32(d, off) | (uint64_t)cfg_r32(d, off + 4) << 32;
	} while (gen != *cc8(d, CC_GEN));
	return v;
}

void vdev_reset(struct vdev *d)
{
	*cc8(d, CC_STATUS) = 0;
	/* The device is reset when it reads 0 again (§4.1.4.3.2); each read
	 * is an exit, so bound it by time. */
	for (uint64_t end = clock_ns() + 1000000000; *cc8(d, CC_STATUS);) {
		if (clock_ns() > end) {
			probe_printf("PROBE virtio_error=reset-timeout type=%u\n", d->type);
			return;
		}
		clock_delay_us(10);
	}
}

uint64_t vdev_offered(struct vdev *d)
{
	uint64_t f;

	*cc32(d, CC_DFSELECT) = 0;
	f = *cc32(d, CC_DF);
	*cc32(d, CC_DFSELECT) = 1;
	return f | (uint64_t)*cc32(d, CC_DF) << 32;
}

static void msix_program(struct vdev *d, uint16_t entry, uint8_t vector)
{
	volatile uint32_t *e = d->msix_table + 4 * entry;

	e[0] = 0xfee00000u | bsp_apic_id << 12;
	e[1] = 0;
	e[2] = vector;
	e[3] = 0;			/* unmasked */
}

static int vq_setup(struct vdev *d, struct virtq *q, uint16_t index, uint16_t qsize)
{
	uint16_t max;

	*cc16(d, CC_Q_SELECT) = index;
	max = *cc16(d, CC_Q_SIZE);
	if (!max)
		return -1;
	if (qsize > max)
		qsize = max;
	if (qsize > VQ_MAX_SIZE)
		qsize = VQ_MAX_SIZE;
	*cc16(d, CC_Q_SIZE) = qsize;
	q->dev = d;
	q->index = index;
	q->size = qsize;
	/* One zeroed block: descriptors, then avail, then used (4-aligned). */
	size_t avail_off = 16u * qsize, used_off = (avail_off + 6 + 2u * qsize + 3) & ~3u;
	uint8_t *mem = dma_alloc(used_off + 6 + 8u * qsize, 4096);

	q->desc = (volatile struct vring_desc *)mem;
	q->avail = (volatile struct vring_avail *)(mem + avail_off);
	q->used = (volatile struct vring_used *)(mem + used_off);
	for (uint16_t i = 0; i < qsize; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->num_free = qsize;
	q->avail_idx = q->last_used = q->pending = 0;
	q->vector = 0;
	q->event_idx = d->features & VIRTIO_F_EVENT_IDX;
	q->ind = d->features & VIRTIO_F_INDIRECT_DESC ?
		 dma_alloc((size_t)qsize * VQ_IND_MAX * 16, 4096) : NULL;
	cc_w64(d, CC_Q_DESC, (uintptr_t)q->desc);
	cc_w64(d, CC_Q_AVAIL, (uintptr_t)q->avail);
	cc_w64(d, CC_Q_USED, (uintptr_t)q->used);
	q->notify = (volatile uint16_t *)(d->notify_base + (uint32_t)*cc16(d, CC_Q_NOFF) * d->notify_mult);
	if (!d->vec_base && d->msix) {		/* IDT vectors: once per device */
		d->vec_base = next_vector;
		next_vector = (uint8_t)(next_vector + VDEV_MAX_VQ);
	}
	if (d->msix && index < d->msix_count - 1 && index < VDEV_MAX_VQ && d->vec_base < 0xf0) {
		q->vector = (uint8_t)(d->vec_base + index);
		msix_program(d, (uint16_t)(index + 1), q->vector);
		*cc16(d, CC_Q_MSIX) = (uint16_t)(index + 1);
		if (*cc16(d, CC_Q_MSIX) != index + 1) {
			probe_printf("PROBE virtio_error=msix-vector-refused queue=%u\n", index);
			q->vector = 0;
		}
	} else {
		*cc16(d, CC_Q_MSIX) = MSIX_NO_VECTOR;
		/* with EVENT_IDX flags must stay 0; no vector means no interrupt anyway */
		if (!q->event_idx)
			q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	}
	*cc16(d, CC_Q_ENABLE) = 1;
	return 0;
}

/* Reset, negotiate (wanted & offered, plus VERSION_1), set up nvq queues.
 * Returns 0, or -1 after setting FAILED (reported). MSI-X table entry 0
 * is the config-change vector (left masked), queue i uses entry i + 1. */
int vdev_init(struct vdev *d, uint64_t wanted, int nvq, uint16_t qsize)
{
	uint64_t offered;

	vdev_reset(d);
	*cc8(d, CC_STATUS) = VS_ACK;
	*cc8(d, CC_STATUS) = VS_ACK | VS_DRIVER;
	offered = vdev_offered(d);
	if (!(offered & VIRTIO_F_VERSION_1)) {
		probe_printf("PROBE virtio_error=no-version-1 type=%u\n", d->type);
		goto fail;
	}
	if (virtio_use_event_idx)
		wanted |= VIRTIO_F_EVENT_IDX;
	if (virtio_use_indirect)
		wanted |= VIRTIO_F_INDIRECT_DESC;
	d->features = offered & (wanted | VIRTIO_F_VERSION_1);
	*cc32(d, CC_GFSELECT) = 0;
	*cc32(d, CC_GF) = (uint32_t)d->features;
	*cc32(d, CC_GFSELECT) = 1;
	*cc32(d, CC_GF) = (uint32_t)(d->features >> 32);
	*cc8(d, CC_STATUS) = VS_ACK | VS_DRIVER | VS_FEATURES_OK;
	if (!(*cc8(d, CC_STATUS) & VS_FEATURES_OK)) {
		probe_printf("PROBE virtio_error=features-not-ok type=%u\n", d->type);
		goto fail;
	}
	d->num_queues = *cc16(d, CC_NUMQ);
	if (nvq > d->num_queues || nvq > VDEV_MAX_VQ) {
		probe_printf("PROBE virtio_error=too-few-queues type=%u num_queues=%u\n",
			     d->type, d->num_queues);
		goto fail;
	}
	d->msix = virtio_use_msix && d->msix_table && d->msix_count >= 2;
	if (d->msix) {
		/* MSI-X enable, function mask off */
		uint16_t ctl = pci_r16(d, d->msix_cap + 2);

		pci_w16(d, d->msix_cap + 2, (uint16_t)((ctl | 0x8000) & ~0x4000));
		d->msix_table[3] = 1;		/* entry 0 (config) masked */
		*cc16(d, CC_MSIX) = MSIX_NO_VECTOR;
	}
	for (int i = 0; i < nvq; i++) {
		if (vq_setup(d, &d->vq[i], (uint16_t)i, qsize)) {
			probe_printf("PROBE virtio_error=queue-unavailable type=%u queue=%d\n", d->type, i);
			goto fail;
		}
	}
	return 0;
fail:
	*cc8(d, CC_STATUS) = VS_FAILED;
	return -1;
}

void vdev_driver_ok(struct vdev *d)
{
	*cc8(d, CC_STATUS) = VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK;
}

uint32_t virtio_irq_count(void)
{
	uint32_t n = 0;

	for (unsigned v = VEC_VIRTIO_BASE; v < next_vector; v++)
		n += irq_counts[v];
	return n;
}
