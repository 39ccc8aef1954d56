/* Probe guest virtio drivers: virtio-pci modern transport (virtio 1.x
 * §4.1) and split virtqueues (§2.7), shared by the blk, net, balloon, rng
 * and hostile scenarios. Everything runs at CPL3: MMIO and RAM are
 * identity-mapped, guest-physical == virtual. */
#ifndef PROBE_VIRTIO_H
#define PROBE_VIRTIO_H
#include "probe.h"

#define VIRTIO_VENDOR		0x1af4
enum { VIRTIO_ID_NET = 1, VIRTIO_ID_BLK = 2, VIRTIO_ID_BALLOON = 5, VIRTIO_ID_RNG = 4 };

/* device_status bits */
#define VS_ACK			1
#define VS_DRIVER		2
#define VS_DRIVER_OK		4
#define VS_FEATURES_OK		8
#define VS_NEEDS_RESET		0x40
#define VS_FAILED		0x80

#define VIRTIO_F_VERSION_1	(1ull << 32)
#define VIRTIO_F_EVENT_IDX	(1ull << 29)
#define VIRTIO_F_INDIRECT_DESC	(1ull << 28)

/* split ring layout (little-endian, x86 native) */
#define VRING_DESC_F_NEXT	1
#define VRING_DESC_F_WRITE	2
#define VRING_DESC_F_INDIRECT	4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY	1

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
struct vring_avail {
	uint16_t flags, idx, ring[];
};
struct vring_used_elem {
	uint32_t id, len;
};
struct vring_used {
	uint16_t flags, idx;
	struct vring_used_elem ring[];
};

#define VQ_MAX_SIZE		256
#define VQ_IND_MAX		8	/* descriptors per indirect table */
#define VDEV_MAX_VQ		4
#define MSIX_NO_VECTOR		0xffff

struct vdev;

struct virtq {
	struct vdev *dev;
	uint16_t index, size;
	uint16_t free_head, num_free;
	uint16_t avail_idx;		/* our shadow of avail->idx */
	uint16_t last_used;		/* next used entry to consume */
	uint16_t pending;		/* added since the last kick */
	bool event_idx;			/* VIRTIO_F_EVENT_IDX negotiated */
	volatile struct vring_desc *ind;	/* INDIRECT_DESC: VQ_IND_MAX per head */
	uint8_t vector;			/* IDT vector in MSI-X mode, else 0 */
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	volatile uint16_t *notify;
	void *cookie[VQ_MAX_SIZE];
	uint64_t kicks;
};

struct vdev {
	uint8_t bus, slot, fn;
	uint16_t type;			/* VIRTIO_ID_* */
	uint16_t pci_id;
	bool msix;			/* irq=msix; else polling */
	volatile uint8_t *common, *isr, *cfg, *notify_base;
	uint32_t notify_mult, cfg_len;
	volatile uint32_t *msix_table;
	uint16_t msix_count;
	uint8_t msix_cap;
	uint8_t vec_base;		/* first IDT vector of its queues */
	uint64_t features;		/* negotiated */
	uint16_t num_queues;
	struct virtq vq[VDEV_MAX_VQ];
};

struct vq_buf {
	const void *addr;
	uint32_t len;
};

/* virtio_pci.c */
extern bool virtio_use_msix;		/* irq=msix on the command line */
extern bool virtio_use_event_idx;	/* event_idx=1 */
extern bool virtio_use_indirect;	/* indirect=1 */
void virtio_setup(void);		/* ECAM and irq mode from the command line */
struct vdev *virtio_find(uint16_t type, int nth);
int vdev_init(struct vdev *d, uint64_t wanted, int nvq, uint16_t qsize);
void vdev_driver_ok(struct vdev *d);
void vdev_reset(struct vdev *d);
uint8_t vdev_status(struct vdev *d);
uint64_t vdev_offered(struct vdev *d);
uint8_t cfg_r8(struct vdev *d, uint32_t off);
uint16_t cfg_r16(struct vdev *d, uint32_t off);
uint32_t cfg_r32(struct vdev *d, uint32_t off);
uint64_t cfg_r64(struct vdev *d, uint32_t off);
void cfg_w32(struct vdev *d, uint32_t off, uint32_t v);
uint32_t virtio_irq_count(void);

/* virtq.c */
int vq_add(struct virtq *q, const struct vq_buf *bufs, int nout, int nin, void *cookie);
void vq_kick(struct virtq *q);
void *vq_get(struct virtq *q, uint32_t *len);
bool vq_has_used(struct virtq *q);
bool vq_wait(struct virtq *q, uint64_t timeout_ms);
void vq_sleep(struct virtq *q);
void *vq_get_wait(struct virtq *q, uint32_t *len, uint64_t timeout_ms);

/* dma memory: a bump allocator over RAM above the image, zeroed. */
void *dma_alloc(size_t size, size_t align);
void dma_mark(void);
void dma_release(void);			/* back to the last mark */
uint64_t ram_end(void);			/* end of the RAM region holding the image */

/* helpers from main.c / crc.c */
bool cmdline_get(const char *key, char out[64]);
uint64_t cmdline_u64(const char *key, uint64_t dflt);
uint64_t parse_u64(const char *s, uint64_t dflt);
uint32_t crc32_update(uint32_t crc, const void *buf, size_t n);
uint64_t mix64(uint64_t z);
void probe_memset(void *d, int c, size_t n);

void scn_blk(const char *arg);
void scn_blk_bench(const char *arg);
void scn_blk_wz(const char *arg);
void scn_blk_mq(const char *arg);
void scn_rng(const char *arg);
void scn_balloon(const char *arg);
void scn_net(const char *arg);
void scn_net_bench(const char *arg);
void scn_net_echo(const char *arg);
void scn_net_ip(const char *arg);
void scn_hostile(const char *arg);
void scn_devloop(const char *arg);
uint64_t balloon_inflate(uint64_t mib);
void balloon_service(void);
#endif
