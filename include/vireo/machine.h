/* The machine description (src/vmm/machine.c): what `vireo run` builds,
 * as a snapshot records it, so that a restore builds the same machine.
 *
 * Only what a restore needs today; `vireo run` still assembles the VM from
 * its options (src/cmd/run.c) and fills this from them, and a restore
 * turns it back into those options. */
#ifndef VIREO_MACHINE_H
#define VIREO_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

struct state_writer;
struct state_reader;

#define MACHINE_MAX_DISKS 8
#define MACHINE_MAX_NICS 4

/* A disk as `vireo run --disk` gives it; a restore reopens it by path. */
struct machine_disk {
	char path[4096];
	char format[16];      /* "": probed */
	char serial[21];
	bool readonly;
	uint64_t bps, iops;
	int cache, aio;       /* enum block_cache, enum block_aio */
	unsigned int queues;  /* virtqueues (1 to VIRTIO_BLK_MAX_QUEUES) */
};

/* A vNIC: its tap by name (the MAC the guest knows is device state). */
struct machine_nic {
	char tap[16];
	uint8_t mac[6];
	bool mac_set;
	uint16_t mtu;
	uint64_t rx_bps, tx_bps;
};

struct machine_config {
	unsigned int ncpus;
	uint64_t mem_size;
	bool hugepages;
	bool debug_exit;      /* the test exit port 0xf4 (run --debug-exit) */
	unsigned int ndisks;  /* virtio devices, created in this order: */
	unsigned int nnics;   /* disks, rng, vNICs, balloon */
	bool rng, balloon;
	struct machine_disk disks[MACHINE_MAX_DISKS];
	struct machine_nic nics[MACHINE_MAX_NICS];
	uint64_t rng_bps, balloon_target;
	/* Booted through --firmware: the ROM is in the state itself
	 * (STATE_SEC_FIRMWARE), fw_cfg is rebuilt from this description. */
	bool firmware;
	bool firmware_kernel; /* with --kernel: fw_cfg's bootorder names it */
};

/* STATE_SEC_MACHINE: u32 vCPUs, u64 RAM bytes, u8 hugepages, u8 debug
 * exit, u32 disks, u32 vNICs, u8 rng, u8 balloon; then per disk blob path,
 * blob format, blob serial, u8 readonly, u64 bps, u64 iops, u32 cache,
 * u32 aio; per vNIC blob tap, 6 bytes MAC, u8 MAC set, u32 MTU, u64 rx
 * and tx bps; u64 rng bps if rng; u64 balloon target if balloon; then per
 * disk u32 queues (files from before multi-queue end before: 1 queue);
 * then u8 firmware, u8 firmware kernel (files from before end before:
 * a direct boot). */
void machine_save(const struct machine_config *m, struct state_writer *w);
/* 0, or -EINVAL with err_set() for a missing or malformed section. */
int machine_load(const struct state_reader *r, struct machine_config *m);

#endif
