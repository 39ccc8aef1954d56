/* The virtio-pci modern transport (virtio 1.x §4.1). BAR0 (32 KiB, 32-bit
 * memory) holds every structure:
 *   0x0000 common configuration   0x1000 ISR status
 *   0x2000 device configuration   0x3000 notifications (4 bytes per queue)
 *   0x4000 MSI-X table            0x6000 MSI-X pending bits
 * and vendor capabilities in config space point at them. Queue kicks reach
 * the device's I/O thread through ioeventfds (or through the vCPU, which
 * then waits: a firmware's polling driver, kick_wait()), interrupts go out
 * as MSIs (KVM_SIGNAL_MSI), or as ISR + INTx when the driver has no MSI-X. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

#define BAR_SIZE        0x8000
#define OFF_COMMON      0x0000
#define OFF_ISR         0x1000
#define OFF_DEVICE      0x2000
#define OFF_NOTIFY      0x3000
#define OFF_MSIX_TABLE  0x4000
#define OFF_MSIX_PBA    0x6000
#define NOTIFY_MULT     4
/* MSI-X vectors: 8 (config + up to 7 queues, the layout every snapshot
 * before multi-queue has), or one per queue and one for config on a device
 * with more queues (multi-queue blk), so that each queue interrupts on its
 * own vector and Linux can give each one the affinity of its CPUs. */
#define MSIX_VECTORS_MIN 8

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR    3
#define CAP_DEVICE 4

/* Config-space offsets of the capabilities vireo lays out. */
#define CAP_AT_MSIX   0x40
#define CAP_AT_COMMON 0x4c
#define CAP_AT_NOTIFY 0x5c
#define CAP_AT_ISR    0x70
#define CAP_AT_DEVICE 0x80
#define MSIX_ENABLE   0x8000
#define MSIX_MASKALL  0x4000
/* How long a vCPU waits for the requests it kicked (kick_wait()). */
#define KICK_WAIT_NS  (100 * 1000000L)

bool virtio_feature(const struct virtio_dev *dev, uint64_t bit)
{
	return (dev->driver_features & bit) != 0;
}

static uint64_t device_features(const struct virtio_dev *dev)
{
	return dev->ops->features | VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC |
	       VIRTIO_F_RING_EVENT_IDX;
}

/* ---- interrupts ---- */

static uint16_t msix_control(const struct virtio_dev *dev)
{
	return (uint16_t)bus_get(dev->pci.config + CAP_AT_MSIX + 2, 2);
}

static void msix_send(struct virtio_dev *dev, uint16_t vector)
{
	const uint32_t *e;
	uint64_t one = 1;

	if (vector >= dev->nvectors)
		return;
	e = dev->msix[vector];
	if ((e[3] & 1) || (msix_control(dev) & MSIX_MASKALL)) {
		dev->msix_pba |= 1ULL << vector; /* delivered when unmasked */
		return;
	}
	dev->stats.interrupts++;
	if (dev->msix_gsi[vector] >= 0) {
		/* The irqfd path: KVM raises the MSI itself. */
		if (write(dev->msix_irqfd[vector], &one, 8) < 0)
			log_ratelimited("%s: irqfd: %s", dev->ops->name, strerror(errno));
		return;
	}
	struct kvm_msi msi = { .address_lo = e[0], .address_hi = e[1], .data = e[2] };

	if (dev->vm && ioctl(dev->vm->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
		log_ratelimited("%s: MSI delivery failed: %s", dev->ops->name, strerror(errno));
}

/* The driver wrote a vector's address or data: follow it with its route. */
static void msix_route(struct virtio_dev *dev, unsigned int vector)
{
	const uint32_t *e = dev->msix[vector];
	int gsi;

	if (!dev->vm || dev->msix_irqfd[vector] < 0)
		return;
	gsi = irq_msi_route(dev->vm, dev->msix_gsi[vector], e[0] | (uint64_t)e[1] << 32, e[2]);
	if (gsi < 0) {
		log_ratelimited("%s: MSI route: %s", dev->ops->name, strerror(-gsi));
		return;
	}
	if (dev->msix_gsi[vector] < 0 && irq_irqfd(dev->vm, dev->msix_irqfd[vector],
						   (uint32_t)gsi, true) < 0)
		return; /* stays on KVM_SIGNAL_MSI */
	dev->msix_gsi[vector] = gsi;
}

/* INTA# follows the ISR: asserted while any ISR bit is set (the driver's
 * read of the ISR clears it). The line is the slot's, whatever the guest
 * wrote into Interrupt Line. */
static void intx_update(struct virtio_dev *dev)
{
	pci_set_intx(&dev->pci, dev->isr != 0);
}

/* Called with dev->lock held. */
static void virtio_interrupt(struct virtio_dev *dev, uint16_t vector, uint8_t isr_bit)
{
	if (msix_control(dev) & MSIX_ENABLE) {
		if (vector != VIRTIO_NO_VECTOR)
			msix_send(dev, vector);
		return;
	}
	dev->isr |= isr_bit;
	intx_update(dev);
	dev->stats.interrupts++;
}

void virtio_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtq *vq = &dev->vqs[q];

	if (dev->kick_waiters)
		pthread_cond_broadcast(&dev->used_cond);
	if (virtq_needs_interrupt(vq))
		virtio_interrupt(dev, vq->msix_vector, 1);
}

void virtio_config_changed(struct virtio_dev *dev)
{
	dev->config_generation++;
	if (dev->status & VIRTIO_STATUS_DRIVER_OK)
		virtio_interrupt(dev, dev->config_vector, 2);
}

void virtio_set_broken(struct virtio_dev *dev, const char *why)
{
	dev->stats.ring_errors++;
	log_ratelimited("%s: guest broke a virtqueue (%s); device needs reset", dev->ops->name, why);
	if (!(dev->status & VIRTIO_STATUS_NEEDS_RESET)) {
		dev->status |= VIRTIO_STATUS_NEEDS_RESET;
		dev->config_generation++;
		virtio_interrupt(dev, dev->config_vector, 2);
	}
}

/* ---- common configuration ---- */

static void virtio_reset(struct virtio_dev *dev)
{
	if (dev->ops->reset)
		dev->ops->reset(dev);
	for (unsigned int q = 0; q < dev->ops->num_queues; q++)
		dev->vqs[q] = (struct virtq){ .size = VIRTQ_MAX_SIZE, .msix_vector = VIRTIO_NO_VECTOR,
					      .mem = dev->vqs[q].mem };
	dev->driver_features = 0;
	dev->status = 0;
	dev->isr = 0;
	dev->config_vector = VIRTIO_NO_VECTOR;
	dev->deferred = 0;
	dev->stats.resets++;
	intx_update(dev);
}

static struct virtq *selected_queue(struct virtio_dev *dev)
{
	return dev->queue_select < dev->ops->num_queues ? &dev->vqs[dev->queue_select] : NULL;
}

static void queue_enable(struct virtio_dev *dev, struct virtq *vq)
{
	if (!virtq_rings_ok(vq)) {
		virtio_set_broken(dev, "queue rings misaligned or outside guest RAM");
		return;
	}
	vq->event_idx = virtio_feature(dev, VIRTIO_F_RING_EVENT_IDX);
	vq->last_avail = vq->used_idx = vq->signalled_used = 0;
	vq->enabled = true;
}

static void status_write(struct virtio_dev *dev, uint8_t status)
{
	if (status == 0) {
		virtio_reset(dev);
		return;
	}
	if ((status & VIRTIO_STATUS_FEATURES_OK) && !(dev->status & VIRTIO_STATUS_FEATURES_OK)) {
		/* Accept only subsets of what we offer, with VERSION_1 (§6.1). */
		if ((dev->driver_features & ~device_features(dev)) ||
		    !(dev->driver_features & VIRTIO_F_VERSION_1))
			status &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
	}
	if ((status & VIRTIO_STATUS_DRIVER_OK) && !(dev->status & VIRTIO_STATUS_DRIVER_OK) &&
	    dev->ops->activate)
		dev->ops->activate(dev);
	dev->status = (uint8_t)(status | (dev->status & VIRTIO_STATUS_NEEDS_RESET));
}

static uint64_t common_read(struct virtio_dev *dev, unsigned int off)
{
	struct virtq *vq = selected_queue(dev);
	uint64_t features = device_features(dev);

	switch (off) {
	case 0: return dev->device_feature_select;
	case 4: return dev->device_feature_select < 2 ?
		       (uint32_t)(features >> (32 * dev->device_feature_select)) : 0;
	case 8: return dev->driver_feature_select;
	case 12: return dev->driver_feature_select < 2 ?
		       (uint32_t)(dev->driver_features >> (32 * dev->driver_feature_select)) : 0;
	case 16: return dev->config_vector;
	case 18: return dev->ops->num_queues;
	case 20: return dev->status;
	case 21: return dev->config_generation;
	case 22: return dev->queue_select;
	case 24: return vq ? vq->size : 0;
	case 26: return vq ? vq->msix_vector : VIRTIO_NO_VECTOR;
	case 28: return vq ? vq->enabled : 0;
	case 30: return vq ? dev->queue_select : 0;
	case 32: return vq ? vq->desc_gpa : 0;
	case 40: return vq ? vq->avail_gpa : 0;
	case 48: return vq ? vq->used_gpa : 0;
	default: return 0;
	}
}

static void queue_field_write(struct virtio_dev *dev, struct virtq *vq, unsigned int off,
			      uint64_t v, unsigned int len)
{
	if (vq->enabled && off != 26)
		return; /* ring layout is fixed while the queue runs */
	switch (off) {
	case 24:
		if (v && v <= VIRTQ_MAX_SIZE && !(v & (v - 1)))
			vq->size = (uint16_t)v;
		break;
	case 26: vq->msix_vector = v < dev->nvectors ? (uint16_t)v : VIRTIO_NO_VECTOR; break;
	case 28: if (v == 1) queue_enable(dev, vq); break;
	case 32: case 36: case 40: case 44: case 48: case 52: {
		/* 64-bit fields, written as one quad or two dwords. */
		uint64_t *field = off < 40 ? &vq->desc_gpa : off < 48 ? &vq->avail_gpa : &vq->used_gpa;
		unsigned int shift = (off & 4) ? 32 : 0;
		uint64_t mask = (len == 8 ? ~0ULL : 0xffffffffULL) << shift;

		*field = (*field & ~mask) | ((v << shift) & mask);
		break;
	}
	default: break;
	}
}

static void common_write(struct virtio_dev *dev, unsigned int off, uint64_t v, unsigned int len)
{
	struct virtq *vq = selected_queue(dev);

	switch (off) {
	case 0: dev->device_feature_select = (uint32_t)v; break;
	case 8: dev->driver_feature_select = (uint32_t)v; break;
	case 12:
		if (dev->driver_feature_select < 2 && !(dev->status & VIRTIO_STATUS_FEATURES_OK)) {
			unsigned int shift = 32 * dev->driver_feature_select;

			dev->driver_features = (dev->driver_features & ~(0xffffffffULL << shift)) |
					       ((v & 0xffffffffULL) << shift);
		}
		break;
	case 16: dev->config_vector = v < dev->nvectors ? (uint16_t)v : VIRTIO_NO_VECTOR; break;
	case 20: status_write(dev, (uint8_t)v); break;
	case 22: dev->queue_select = (uint16_t)v; break;
	default:
		if (vq && off >= 24)
			queue_field_write(dev, vq, off, v, len);
		break;
	}
}

/* ---- BAR0 ---- */

/* Sends the vectors that fired while masked and may be delivered now
 * (PCI 3.0 §6.8.2.9: a pending message goes out once neither the
 * function nor its vector is masked). Called with dev->lock held. */
static void msix_deliver_pending(struct virtio_dev *dev)
{
	uint16_t control = msix_control(dev);

	if (!(control & MSIX_ENABLE) || (control & MSIX_MASKALL))
		return;
	for (unsigned int v = 0; v < dev->nvectors; v++) {
		if (!(dev->msix_pba & (1ULL << v)) || (dev->msix[v][3] & 1))
			continue;
		dev->msix_pba &= ~(1ULL << v);
		msix_send(dev, (uint16_t)v);
	}
}

static void msix_write(struct virtio_dev *dev, unsigned int off, uint64_t v, unsigned int len)
{
	unsigned int vector = off / 16, word = (off % 16) / 4;
	bool was_masked;

	if (vector >= dev->nvectors || (len != 4 && len != 8))
		return;
	was_masked = dev->msix[vector][3] & 1;
	dev->msix[vector][word] = (uint32_t)v;
	if (len == 8 && word < 3)
		dev->msix[vector][word + 1] = (uint32_t)(v >> 32);
	if (word < 3)
		msix_route(dev, vector);
	if (was_masked && !(dev->msix[vector][3] & 1))
		msix_deliver_pending(dev);
}

static void bar_read(struct virtio_dev *dev, unsigned int off, uint8_t *data, unsigned int len)
{
	uint64_t v = 0;

	if (off < OFF_COMMON + 64) {
		v = common_read(dev, off - OFF_COMMON);
	} else if (off == OFF_ISR) {
		v = dev->isr; /* reading acknowledges */
		dev->isr = 0;
		intx_update(dev);
	} else if (off >= OFF_DEVICE && off - OFF_DEVICE + len <= dev->config_size) {
		v = bus_get(dev->config + off - OFF_DEVICE, len);
	} else if (off >= OFF_MSIX_TABLE && off < OFF_MSIX_TABLE + 16 * dev->nvectors) {
		unsigned int i = (off - OFF_MSIX_TABLE) / 16, w = (off % 16) / 4;

		v = dev->msix[i][w] | (len == 8 && w < 3 ? (uint64_t)dev->msix[i][w + 1] << 32 : 0);
	} else if (off == OFF_MSIX_PBA) {
		v = dev->msix_pba;
	}
	bus_put(data, len, v);
}

static void ioeventfds_set(struct virtio_dev *dev, uint64_t base, bool assign);

/* Whether kicks exit to the vCPU instead of going through ioeventfds:
 * in a firmware boot, until the driver enables MSI-X (an OS's driver does,
 * the firmware's does not). A firmware's driver (SeaBIOS, and GRUB and
 * other boot loaders through its disk calls) takes no interrupts: it polls
 * the used ring, and between two looks it leaves its 32-bit driver for
 * real mode and back, a handful of exits (CR0, the A20 and CMOS ports) that
 * cost the most under nested virtualization. Waiting in its kick until the
 * requests are done (kick_wait()) lets its first look find them. */
static bool kicks_wait(const struct virtio_dev *dev)
{
	return dev->vm && dev->vm->firmware && !(msix_control(dev) & MSIX_ENABLE);
}

/* Installs or removes the ioeventfds to match BAR0 and kicks_wait(). */
static void kicks_route(struct virtio_dev *dev)
{
	bool on = dev->bar_base && !kicks_wait(dev);

	if (on != dev->ioeventfds_on) {
		ioeventfds_set(dev, dev->bar_base, on);
		dev->ioeventfds_on = on;
	}
}

/* A kick that reached us (kicks_wait(), or no ioeventfd could be
 * installed): hand it to the I/O thread, as the ioeventfd would have. */
static void kick(struct virtio_dev *dev, unsigned int q)
{
	uint64_t one = 1;

	if (write(dev->kick_fd[q], &one, 8) < 0)
		log_ratelimited("%s: kick: %s", dev->ops->name, strerror(errno));
}

/* If the driver polls queue q (it asked for no interrupts there, as
 * SeaBIOS does), waits until the queue has used every request the driver
 * had made available, at most KICK_WAIT_NS (a request deferred by a rate
 * limit, a quiesced device or a guest that lies about its avail index costs
 * its own vCPU that long, no more). A driver that takes interrupts, such as
 * an OS's without MSI-X, goes on at once. dev->lock held; released while
 * waiting. No other lock is held: bus_access() calls its handler after
 * letting go of the bus's lock. */
static void kick_wait(struct virtio_dev *dev, unsigned int q)
{
	struct virtq *vq = &dev->vqs[q];
	struct timespec until;
	uint16_t avail;

	if (!virtq_interrupts_off(vq) || !virtq_avail_idx(vq, &avail))
		return;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += KICK_WAIT_NS;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	dev->kick_waiters++;
	while (vq->enabled && vq->used_idx != avail &&
	       pthread_cond_timedwait(&dev->used_cond, &dev->lock, &until) == 0)
		;
	dev->kick_waiters--;
}

static void bar_write(struct virtio_dev *dev, unsigned int off, const uint8_t *data, unsigned int len)
{
	uint64_t v = bus_get(data, len);

	if (off < OFF_COMMON + 64) {
		common_write(dev, off - OFF_COMMON, v, len);
	} else if (off >= OFF_DEVICE && off - OFF_DEVICE + len <= dev->config_size) {
		if (dev->ops->config_write)
			dev->ops->config_write(dev, off - OFF_DEVICE, data, len);
	} else if (off >= OFF_NOTIFY && off < OFF_NOTIFY + NOTIFY_MULT * dev->ops->num_queues) {
		unsigned int q = (off - OFF_NOTIFY) / NOTIFY_MULT;

		kick(dev, q);
		if (kicks_wait(dev))
			kick_wait(dev, q);
	} else if (off >= OFF_MSIX_TABLE && off < OFF_MSIX_TABLE + 16 * dev->nvectors) {
		msix_write(dev, off - OFF_MSIX_TABLE, v, len);
	}
}

static void bar_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct virtio_dev *dev = opaque;

	pthread_mutex_lock(&dev->lock);
	if (is_write)
		bar_write(dev, (unsigned int)offset, data, len);
	else
		bar_read(dev, (unsigned int)offset, data, len);
	pthread_mutex_unlock(&dev->lock);
}

static void ioeventfds_set(struct virtio_dev *dev, uint64_t base, bool assign)
{
	for (unsigned int q = 0; q < dev->ops->num_queues; q++) {
		struct kvm_ioeventfd ev = {
			.addr = base + OFF_NOTIFY + NOTIFY_MULT * q, .len = 0,
			.fd = dev->kick_fd[q], .flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
		};

		if (ioctl(dev->vm->vm_fd, KVM_IOEVENTFD, &ev) < 0) {
			ev.len = 2; /* hosts without KVM_CAP_IOEVENTFD_ANY_LENGTH */
			if (ioctl(dev->vm->vm_fd, KVM_IOEVENTFD, &ev) < 0)
				log_debug("%s: ioeventfd: %s", dev->ops->name, strerror(errno));
		}
	}
}

/* Takes BAR0 and its kicks off the MMIO bus. */
static void bar_unmap(struct virtio_dev *dev)
{
	if (!dev->bar_base)
		return;
	if (dev->ioeventfds_on)
		ioeventfds_set(dev, dev->bar_base, false);
	dev->ioeventfds_on = false;
	bus_unregister(&dev->vm->mmio, dev->bar_base);
	dev->bar_base = 0;
}

/* BAR0 moved or decoding changed: follow it on the MMIO bus. */
static void bar_remap(struct pci_device *pci, unsigned int offset, unsigned int len)
{
	struct virtio_dev *dev = pci->opaque;
	uint64_t base = pci_bar_address(pci, 0);

	(void)len;
	if (!(offset <= 0x10 + 3 && offset + len > 0x4) || base == dev->bar_base || !dev->vm)
		return;
	bar_unmap(dev);
	if (base && !bus_register(&dev->vm->mmio, base, BAR_SIZE, bar_io, dev, dev->ops->name)) {
		dev->bar_base = base;
		kicks_route(dev);
	}
}

/* A config write: BAR0 may have moved, or the MSI-X function mask or
 * enable bit changed (bus lock held; dev->lock is taken inside it). */
static void config_written(struct pci_device *pci, unsigned int offset, unsigned int len)
{
	struct virtio_dev *dev = pci->opaque;

	bar_remap(pci, offset, len);
	if (offset <= CAP_AT_MSIX + 3 && offset + len > CAP_AT_MSIX + 2) {
		kicks_route(dev);
		pthread_mutex_lock(&dev->lock);
		msix_deliver_pending(dev);
		pthread_mutex_unlock(&dev->lock);
	}
}

/* ---- PCI identity and capabilities ---- */

static void add_virtio_cap(uint8_t *c, unsigned int at, unsigned int next, uint8_t type,
			   uint32_t offset, uint32_t length, unsigned int caplen)
{
	c[at] = 0x09;           /* vendor-specific */
	c[at + 1] = (uint8_t)next;
	c[at + 2] = (uint8_t)caplen;
	c[at + 3] = type;
	c[at + 4] = 0;          /* BAR0 */
	bus_put(c + at + 8, 4, offset);
	bus_put(c + at + 12, 4, length);
}

static void pci_identity(struct virtio_dev *dev, struct pci_bus *bus)
{
	struct pci_device *p = &dev->pci;
	uint8_t *c = p->config;
	uint64_t bar;

	pci_device_init(p, 0x1af4, (uint16_t)(0x1040 + dev->ops->device_id), dev->ops->pci_class,
			dev->ops->name);
	c[0x08] = 1;                              /* revision 1: modern only */
	bus_put(c + 0x2c, 2, 0x1af4);
	bus_put(c + 0x2e, 2, dev->ops->device_id);
	bus_put(c + 0x06, 2, 0x10);                   /* status: capability list */
	c[0x34] = CAP_AT_MSIX;
	c[0x3d] = 1;                              /* INTA# */
	/* MSI-X: table and PBA in BAR0. */
	c[CAP_AT_MSIX] = 0x11;
	c[CAP_AT_MSIX + 1] = CAP_AT_COMMON;
	bus_put(c + CAP_AT_MSIX + 2, 2, dev->nvectors - 1);
	bus_put(c + CAP_AT_MSIX + 4, 4, OFF_MSIX_TABLE);
	bus_put(c + CAP_AT_MSIX + 8, 4, OFF_MSIX_PBA);
	bus_put(p->wmask + CAP_AT_MSIX + 2, 2, MSIX_ENABLE | MSIX_MASKALL);
	add_virtio_cap(c, CAP_AT_COMMON, CAP_AT_NOTIFY, CAP_COMMON, OFF_COMMON, 64, 16);
	add_virtio_cap(c, CAP_AT_NOTIFY, CAP_AT_ISR, CAP_NOTIFY, OFF_NOTIFY,
		       NOTIFY_MULT * dev->ops->num_queues, 20);
	bus_put(c + CAP_AT_NOTIFY + 16, 4, NOTIFY_MULT);
	/* A device without configuration (rng) has no device capability:
	 * one of length 0 is malformed, and Linux refuses the device. */
	add_virtio_cap(c, CAP_AT_ISR, dev->config_size ? CAP_AT_DEVICE : 0, CAP_ISR, OFF_ISR, 1, 16);
	if (dev->config_size)
		add_virtio_cap(c, CAP_AT_DEVICE, 0, CAP_DEVICE, OFF_DEVICE, dev->config_size, 16);
	pci_set_bar(p, 0, BAR_SIZE);
	/* Pre-assign BAR0 and enable decoding, as firmware would. */
	bar = pci_alloc_mmio(bus, BAR_SIZE);
	bus_put(c + 0x10, 4, bar);
	bus_put(c + 0x04, 2, bar ? 0x6 : 0);          /* memory space, bus master */
	p->opaque = dev;
	p->config_written = config_written;
}

/* ---- the I/O thread ---- */

void virtio_serve(struct virtio_dev *dev, unsigned int q)
{
	/* Quiesced: the queue is looked at again by virtio_unquiesce(). */
	if ((dev->status & VIRTIO_STATUS_DRIVER_OK) &&
	    !(dev->status & VIRTIO_STATUS_NEEDS_RESET) && dev->vqs[q].enabled &&
	    !(dev->deferred & (1u << q)) && !dev->quiesced) {
		dev->busy++;
		dev->ops->queue_notify(dev, q);
		dev->busy--;
	}
}

void virtio_defer(struct virtio_dev *dev, unsigned int q, uint64_t ns)
{
	struct itimerspec its = { .it_value = { .tv_sec = (time_t)(ns / 1000000000ULL),
						.tv_nsec = (long)(ns % 1000000000ULL) } };

	dev->deferred |= 1u << q;
	timerfd_settime(dev->timer_fd, 0, &its, NULL);
}

void virtio_undefer(struct virtio_dev *dev)
{
	struct itimerspec now = { .it_value = { .tv_nsec = 1 } };

	pthread_mutex_lock(&dev->lock);
	if (dev->deferred)
		timerfd_settime(dev->timer_fd, 0, &now, NULL);
	pthread_mutex_unlock(&dev->lock);
}

static void virtio_run_deferred(struct virtio_dev *dev)
{
	pthread_mutex_lock(&dev->lock);
	unsigned int queues = dev->deferred;

	dev->deferred = 0;
	for (unsigned int q = 0; q < dev->ops->num_queues; q++)
		if (queues & (1u << q))
			virtio_serve(dev, q);
	pthread_mutex_unlock(&dev->lock);
}

static void virtio_thread_event(struct virtio_dev *dev, unsigned int q)
{
	uint64_t count;

	if (q == ~2u) {
		pthread_mutex_lock(&dev->lock);
		/* Completions still run while quiesced: that is how in-flight
		 * requests drain (a model that would take new work here, as
		 * net's receive, checks dev->quiesced itself). */
		if ((dev->status & VIRTIO_STATUS_DRIVER_OK) &&
		    !(dev->status & VIRTIO_STATUS_NEEDS_RESET)) {
			dev->busy++;
			dev->ops->fd_ready(dev);
			dev->busy--;
		}
		pthread_mutex_unlock(&dev->lock);
		return;
	}
	if (q == ~1u) {
		if (read(dev->timer_fd, &count, 8) > 0)
			virtio_run_deferred(dev);
		return;
	}
	if (read(dev->kick_fd[q], &count, 8) < 0)
		return;
	pthread_mutex_lock(&dev->lock);
	dev->stats.notifies++;
	virtio_serve(dev, q);
	pthread_mutex_unlock(&dev->lock);
}

static void *virtio_thread(void *arg)
{
	struct virtio_dev *dev = arg;
	struct epoll_event evs[8];
	char name[16];

	snprintf(name, sizeof(name), "io-%s", dev->ops->name);
	pthread_setname_np(pthread_self(), name);
	for (;;) {
		int n = epoll_wait(dev->epoll_fd, evs, 8, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* Not retried: it would fail again at once, for ever. */
			log_ratelimited("%s: epoll_wait: %s; the device stops", dev->ops->name,
					strerror(errno));
			return NULL;
		}
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u32 == ~0u)
				return NULL;
			virtio_thread_event(dev, evs[i].data.u32);
		}
	}
}

static int epoll_watch(int ep, int fd, uint32_t events, uint32_t tag)
{
	struct epoll_event ev = { .events = events, .data.u32 = tag };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Every descriptor of the transport, and the I/O thread's epoll set over
 * them. On failure the caller closes what was opened (virtio_fds_close). */
static int virtio_fds_open(struct virtio_dev *dev)
{
	unsigned int q;

	if ((dev->wake_fd = eventfd(0, EFD_CLOEXEC)) < 0 ||
	    (dev->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)) < 0 ||
	    (dev->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return err_set(-errno, "%s: %m", dev->ops->name);
	for (q = 0; q < dev->ops->num_queues; q++)
		if ((dev->kick_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
		    epoll_watch(dev->epoll_fd, dev->kick_fd[q], EPOLLIN, q) < 0)
			return err_set(-errno, "%s: queue %u: %m", dev->ops->name, q);
	for (unsigned int v = 0; v < dev->nvectors; v++)
		if ((dev->msix_irqfd[v] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
			return err_set(-errno, "%s: MSI-X vector %u: %m", dev->ops->name, v);
	if (epoll_watch(dev->epoll_fd, dev->wake_fd, EPOLLIN, ~0u) < 0 ||
	    epoll_watch(dev->epoll_fd, dev->timer_fd, EPOLLIN, ~1u) < 0 ||
	    (dev->ops->fd_ready &&
	     epoll_watch(dev->epoll_fd, dev->extra_fd, EPOLLIN | EPOLLET, ~2u) < 0))
		return err_set(-errno, "%s: epoll: %m", dev->ops->name);
	return 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void virtio_fds_close(struct virtio_dev *dev)
{
	for (unsigned int q = 0; q < dev->ops->num_queues; q++)
		close_fd(&dev->kick_fd[q]);
	close_fd(&dev->wake_fd);
	close_fd(&dev->timer_fd);
	close_fd(&dev->epoll_fd);
	for (unsigned int v = 0; v < dev->nvectors; v++) {
		if (dev->msix_gsi[v] >= 0 && dev->msix_irqfd[v] >= 0)
			irq_irqfd(dev->vm, dev->msix_irqfd[v], (uint32_t)dev->msix_gsi[v], false);
		dev->msix_gsi[v] = -1;
		close_fd(&dev->msix_irqfd[v]);
	}
}

/* Takes BAR0 off the MMIO bus and the device off the PCI bus. */
static void virtio_unplug(struct virtio_dev *dev)
{
	if (dev->vm)
		bar_unmap(dev);
	pci_remove_device(&dev->pci);
}

static void used_cond_init(struct virtio_dev *dev)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* kick_wait()'s deadline */
	pthread_cond_init(&dev->used_cond, &attr);
	pthread_condattr_destroy(&attr);
}

int virtio_pci_create(struct virtio_dev *dev, struct vm *vm, struct pci_bus *bus,
		      const struct virtio_device_ops *ops, void *opaque, unsigned int config_size)
{
	int slot, ret;

	if (!ops->num_queues || ops->num_queues > VIRTIO_MAX_QUEUES)
		return err_set(-EINVAL, "%s: %u queues (1 to %u)", ops->name, ops->num_queues,
			       VIRTIO_MAX_QUEUES);
	dev->ops = ops;
	dev->opaque = opaque;
	dev->nvectors = ops->num_queues + 1 > MSIX_VECTORS_MIN ? ops->num_queues + 1
							      : MSIX_VECTORS_MIN;
	dev->vm = vm;
	dev->config_size = config_size;
	dev->wake_fd = dev->timer_fd = dev->epoll_fd = -1;
	for (unsigned int q = 0; q < ops->num_queues; q++) {
		dev->kick_fd[q] = -1;
		dev->vqs[q].mem = vm ? &vm->mem : NULL;
	}
	for (unsigned int v = 0; v < dev->nvectors; v++) {
		dev->msix[v][3] = 1; /* masked */
		dev->msix_gsi[v] = -1;
		dev->msix_irqfd[v] = -1;
	}
	pthread_mutex_init(&dev->lock, NULL);
	used_cond_init(dev);
	ret = virtio_fds_open(dev);
	if (ret)
		goto close_fds;
	virtio_reset(dev);
	dev->stats.resets = 0;
	pci_identity(dev, bus);
	slot = pci_add_device(bus, &dev->pci);
	if (slot < 0) {
		ret = err_set(slot, "%s: no free PCI slot", ops->name);
		goto close_fds;
	}
	bar_remap(&dev->pci, 0x10, 4);
	ret = pthread_create(&dev->thread, NULL, virtio_thread, dev);
	if (ret) {
		ret = err_set(-ret, "%s: cannot start its I/O thread", ops->name);
		goto unplug;
	}
	dev->thread_started = true;
	return 0;
unplug:
	virtio_unplug(dev);
close_fds:
	virtio_fds_close(dev);
	pthread_cond_destroy(&dev->used_cond);
	pthread_mutex_destroy(&dev->lock);
	return ret;
}

void virtio_pci_destroy(struct virtio_dev *dev)
{
	uint64_t one = 1;

	if (dev->thread_started) {
		if (write(dev->wake_fd, &one, 8) < 0)
			log_debug("wake: %s", strerror(errno));
		pthread_join(dev->thread, NULL);
		dev->thread_started = false;
	}
	virtio_unplug(dev);
	virtio_fds_close(dev);
}

/* ---- snapshots ----
 *
 * Section ops->state_type, id: blob PCI config space (4 KiB); u64 driver
 * features, u32 device and driver feature select, u32 queue select, u32
 * config vector, u8 status, u8 ISR, u8 config generation; u32 queues, each
 * u32 size, u8 enabled, u64 desc, avail and used addresses, u32 MSI-X
 * vector, u32 last avail, u32 used idx, u32 signalled used, u8 event idx;
 * u32 MSI-X vectors, each 4 u32 (address lo, hi, data, control); u64 PBA;
 * then the model's state (ops->save). */

#define QUIESCE_TIMEOUT_MS 10000

int virtio_quiesce(struct virtio_dev *dev)
{
	struct timespec ms = { .tv_nsec = 1000000 };
	unsigned int waited = 0;
	int ret = 0;

	pthread_mutex_lock(&dev->lock);
	dev->quiesced++;
	while (dev->busy || (dev->ops->idle && !dev->ops->idle(dev))) {
		if (waited++ == QUIESCE_TIMEOUT_MS) {
			ret = err_set(-ETIMEDOUT, "%s: requests still in flight after %d ms",
				      dev->ops->name, QUIESCE_TIMEOUT_MS);
			break;
		}
		pthread_mutex_unlock(&dev->lock);
		nanosleep(&ms, NULL);
		pthread_mutex_lock(&dev->lock);
	}
	pthread_mutex_unlock(&dev->lock);
	return ret;
}

/* Every live queue looked at once by the I/O thread. dev->lock held. */
static void kick_queues(struct virtio_dev *dev)
{
	uint64_t one = 1;

	for (unsigned int q = 0; q < dev->ops->num_queues; q++)
		if (dev->vqs[q].enabled && write(dev->kick_fd[q], &one, 8) < 0)
			log_ratelimited("%s: kick: %s", dev->ops->name, strerror(errno));
}

void virtio_unquiesce(struct virtio_dev *dev)
{
	pthread_mutex_lock(&dev->lock);
	if (dev->quiesced && !--dev->quiesced)
		kick_queues(dev);
	pthread_mutex_unlock(&dev->lock);
}

void virtio_save(struct virtio_dev *dev, struct state_writer *w, uint32_t id)
{
	pthread_mutex_lock(&dev->lock);
	state_begin(w, dev->ops->state_type, id, STATE_SECTION_CRITICAL);
	state_put_blob(w, dev->pci.config, PCI_CONFIG_SIZE);
	state_put_u64(w, dev->driver_features);
	state_put_u32(w, dev->device_feature_select);
	state_put_u32(w, dev->driver_feature_select);
	state_put_u32(w, dev->queue_select);
	state_put_u32(w, dev->config_vector);
	state_put_u8(w, dev->status);
	state_put_u8(w, dev->isr);
	state_put_u8(w, dev->config_generation);
	state_put_u32(w, dev->ops->num_queues);
	for (unsigned int q = 0; q < dev->ops->num_queues; q++) {
		const struct virtq *vq = &dev->vqs[q];

		state_put_u32(w, vq->size);
		state_put_u8(w, vq->enabled);
		state_put_u64(w, vq->desc_gpa);
		state_put_u64(w, vq->avail_gpa);
		state_put_u64(w, vq->used_gpa);
		state_put_u32(w, vq->msix_vector);
		state_put_u32(w, vq->last_avail);
		state_put_u32(w, vq->used_idx);
		state_put_u32(w, vq->signalled_used);
		state_put_u8(w, vq->event_idx);
	}
	state_put_u32(w, dev->nvectors);
	for (unsigned int v = 0; v < dev->nvectors; v++)
		for (unsigned int i = 0; i < 4; i++)
			state_put_u32(w, dev->msix[v][i]);
	state_put_u64(w, dev->msix_pba);
	if (dev->ops->save)
		dev->ops->save(dev, w);
	state_end(w);
	pthread_mutex_unlock(&dev->lock);
}

/* The transport as the file has it, not yet applied. */
struct virtio_image {
	uint8_t config[PCI_CONFIG_SIZE];
	uint64_t driver_features;
	uint32_t device_feature_select, driver_feature_select, queue_select, config_vector;
	uint8_t status, isr, config_generation;
	uint32_t nqueues, nvectors;
	struct virtq vqs[VIRTIO_MAX_QUEUES];
	uint32_t raw[VIRTIO_MAX_QUEUES][5];  /* per queue: size, vector, last avail, used idx, signalled */
	uint32_t msix[VIRTIO_MAX_VECTORS][4];
	uint64_t pba;
};

static void image_parse_queue(struct virtio_image *im, unsigned int q, struct state_cursor *c)
{
	struct virtq *vq = &im->vqs[q];

	im->raw[q][0] = state_get_u32(c);
	vq->enabled = state_get_u8(c) != 0;
	vq->desc_gpa = state_get_u64(c);
	vq->avail_gpa = state_get_u64(c);
	vq->used_gpa = state_get_u64(c);
	for (unsigned int i = 1; i < 5; i++)
		im->raw[q][i] = state_get_u32(c);
	vq->event_idx = state_get_u8(c) != 0;
}

static void image_parse(struct virtio_image *im, struct state_cursor *c)
{
	state_get_blob(c, im->config, PCI_CONFIG_SIZE);
	im->driver_features = state_get_u64(c);
	im->device_feature_select = state_get_u32(c);
	im->driver_feature_select = state_get_u32(c);
	im->queue_select = state_get_u32(c);
	im->config_vector = state_get_u32(c);
	im->status = state_get_u8(c);
	im->isr = state_get_u8(c);
	im->config_generation = state_get_u8(c);
	im->nqueues = state_get_u32(c);
	for (unsigned int q = 0; q < im->nqueues && q < VIRTIO_MAX_QUEUES && !c->bad; q++)
		image_parse_queue(im, q, c);
	im->nvectors = state_get_u32(c);
	for (unsigned int v = 0; v < im->nvectors && v < VIRTIO_MAX_VECTORS && !c->bad; v++)
		for (unsigned int i = 0; i < 4; i++)
			im->msix[v][i] = state_get_u32(c);
	im->pba = state_get_u64(c);
}

static bool vector_ok(const struct virtio_dev *dev, uint32_t v)
{
	return v < dev->nvectors || v == VIRTIO_NO_VECTOR;
}

static int image_check_queue(const struct virtio_dev *dev, struct virtio_image *im,
			     unsigned int q)
{
	struct virtq *vq = &im->vqs[q];
	uint32_t size = im->raw[q][0];

	if (!size || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
		return err_set(-EINVAL, "queue %u has size %u", q, size);
	if (!vector_ok(dev, im->raw[q][1]) || im->raw[q][2] > 0xffff || im->raw[q][3] > 0xffff ||
	    im->raw[q][4] > 0xffff)
		return err_set(-EINVAL, "queue %u: vector or index out of range", q);
	vq->size = (uint16_t)size;
	vq->msix_vector = (uint16_t)im->raw[q][1];
	vq->last_avail = (uint16_t)im->raw[q][2];
	vq->used_idx = (uint16_t)im->raw[q][3];
	vq->signalled_used = (uint16_t)im->raw[q][4];
	vq->mem = dev->vqs[q].mem;
	if (vq->enabled && !virtq_rings_ok(vq))
		return err_set(-EINVAL, "queue %u's rings are misaligned or outside guest RAM", q);
	return 0;
}

/* Everything a guest could not have written is what this build made. */
static int image_check(const struct virtio_dev *dev, struct virtio_image *im)
{
	const struct pci_device *p = &dev->pci;
	int ret = 0;

	for (unsigned int i = 0; i < PCI_CONFIG_SIZE; i++)
		if ((im->config[i] ^ p->config[i]) & ~p->wmask[i])
			return err_set(-EINVAL, "PCI config byte 0x%x differs from this device's", i);
	if (im->nqueues != dev->ops->num_queues || im->nvectors != dev->nvectors)
		return err_set(-EINVAL, "%u queues and %u MSI-X vectors, the device has %u and %u",
			       im->nqueues, im->nvectors, dev->ops->num_queues, dev->nvectors);
	if (im->driver_features & ~device_features(dev))
		return err_set(-EINVAL, "driver features 0x%llx are more than the device offers",
			       (unsigned long long)im->driver_features);
	if (!vector_ok(dev, im->config_vector) || (im->isr & ~3u) || (im->pba >> dev->nvectors))
		return err_set(-EINVAL, "config vector, ISR or PBA out of range");
	if (im->queue_select > 0xffff)
		return err_set(-EINVAL, "queue select %u out of range", im->queue_select);
	for (unsigned int q = 0; q < im->nqueues && !ret; q++)
		ret = image_check_queue(dev, im, q);
	return ret;
}

static void image_apply(struct virtio_dev *dev, const struct virtio_image *im)
{
	memcpy(dev->pci.config, im->config, PCI_CONFIG_SIZE);
	dev->driver_features = im->driver_features;
	dev->device_feature_select = im->device_feature_select;
	dev->driver_feature_select = im->driver_feature_select;
	dev->queue_select = (uint16_t)im->queue_select;
	dev->config_vector = (uint16_t)im->config_vector;
	dev->status = im->status;
	dev->isr = im->isr;
	dev->config_generation = im->config_generation;
	memcpy(dev->vqs, im->vqs, sizeof(im->vqs[0]) * im->nqueues);
	memcpy(dev->msix, im->msix, sizeof(im->msix));
	dev->msix_pba = im->pba;
}

/* The VM around the restored state: BAR0 where the guest put it, MSI
 * routes, INTx, the model told DRIVER_OK, pending work looked at. */
static void virtio_restart(struct virtio_dev *dev)
{
	bar_remap(&dev->pci, 0x10, 4);
	kicks_route(dev); /* the restored MSI-X enable bit, if BAR0 stayed */
	pthread_mutex_lock(&dev->lock);
	for (unsigned int v = 0; v < dev->nvectors; v++)
		if (dev->msix[v][0] || dev->msix[v][1])
			msix_route(dev, v);
	intx_update(dev);
	if ((dev->status & VIRTIO_STATUS_DRIVER_OK) && dev->ops->activate)
		dev->ops->activate(dev);
	msix_deliver_pending(dev);
	kick_queues(dev);
	pthread_mutex_unlock(&dev->lock);
}

int virtio_restore(struct virtio_dev *dev, const struct state_reader *r, uint32_t id)
{
	struct virtio_image *im = calloc(1, sizeof(*im));
	struct state_cursor c;
	int ret;

	if (!im)
		return err_set(-ENOMEM, "out of memory");
	ret = state_section(r, dev->ops->state_type, id, &c);
	if (ret)
		goto out;
	image_parse(im, &c);
	ret = c.bad ? state_done(&c) : image_check(dev, im);
	if (ret)
		goto out;
	pthread_mutex_lock(&dev->lock);
	ret = dev->ops->load ? dev->ops->load(dev, &c) : state_done(&c);
	if (!ret)
		image_apply(dev, im);
	pthread_mutex_unlock(&dev->lock);
	if (!ret)
		virtio_restart(dev);
out:
	free(im);
	if (ret)
		err_set(ret, "%s %u: %s", state_section_name(dev->ops->state_type), id, err_get());
	return ret;
}
