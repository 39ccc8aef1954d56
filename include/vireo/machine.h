/* The machine description (src/vmm/machine.c): what `vireo run` builds,
 * as a snapshot records it, so that a restore builds the same machine.
 *
 * Only what a restore needs today; `vireo run` still assembles the VM from
 * its options (src/cmd/run.c) and fills this from them. */
#ifndef VIREO_MACHINE_H
#define VIREO_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

struct state_writer;
struct state_reader;

struct machine_config {
	unsigned int ncpus;
	uint64_t mem_size;
	bool hugepages;
	bool debug_exit;      /* the test exit port 0xf4 (run --debug-exit) */
	unsigned int ndisks;  /* virtio devices: counted, their state is not */
	unsigned int nnics;   /* saved yet (snapshots refuse them) */
	bool rng, balloon;
};

/* STATE_SEC_MACHINE: u32 vCPUs, u64 RAM bytes, u8 hugepages, u8 debug
 * exit, u32 disks, u32 vNICs, u8 rng, u8 balloon. */
void machine_save(const struct machine_config *m, struct state_writer *w);
/* 0, or -EINVAL with err_set() for a missing or malformed section. */
int machine_load(const struct state_reader *r, struct machine_config *m);
/* True (with err_set() detail) if the machine has devices whose state a
 * snapshot cannot save yet. */
bool machine_snapshot_unsupported(const struct machine_config *m);

#endif
