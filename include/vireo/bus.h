/* Port-I/O and MMIO range tables (DESIGN §3.5): the vCPU loop looks an exit up
 * here and calls the device's handler. Handlers run on vCPU threads, so a
 * device that also has event-loop state protects it with its own lock. */
#ifndef VIREO_BUS_H
#define VIREO_BUS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Reads fill data[0..len); writes consume it. offset is relative to the
 * range's base. len is 1, 2, 4 or 8. */
typedef void (*bus_handler)(void *opaque, uint64_t offset, uint8_t *data,
			    uint32_t len, bool is_write);

struct bus_range {
	uint64_t base;
	uint64_t len;
	bus_handler handler;
	void *opaque;
	const char *name;
};

struct bus {
	pthread_rwlock_t lock;
	struct bus_range *ranges; /* sorted by base, non-overlapping */
	unsigned int count;
	uint64_t unhandled;      /* accesses that hit no device */
};

void bus_init(struct bus *bus);
void bus_destroy(struct bus *bus);
/* Returns 0, -EEXIST if the range overlaps another, -ENOMEM. */
int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_handler handler,
		 void *opaque, const char *name);
int bus_unregister(struct bus *bus, uint64_t base);
/* Dispatches one access. Unclaimed reads return all ones, writes are
 * dropped (what real hardware does); returns false for those. */
bool bus_access(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write);

/* Little-endian helpers for handlers. */
static inline uint64_t bus_get(const uint8_t *data, uint32_t len)
{
	uint64_t v = 0;
	for (uint32_t i = 0; i < len && i < 8; i++)
		v |= (uint64_t)data[i] << (8 * i);
	return v;
}

static inline void bus_put(uint8_t *data, uint32_t len, uint64_t v)
{
	for (uint32_t i = 0; i < len && i < 8; i++)
		data[i] = (uint8_t)(v >> (8 * i));
}

#endif
