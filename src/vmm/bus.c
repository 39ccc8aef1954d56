#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/bus.h"

void bus_init(struct bus *bus)
{
	memset(bus, 0, sizeof(*bus));
	pthread_rwlock_init(&bus->lock, NULL);
}

void bus_destroy(struct bus *bus)
{
	free(bus->ranges);
	pthread_rwlock_destroy(&bus->lock);
}

/* Index of the first range whose end is above addr (binary search). */
static unsigned int bus_lower_bound(const struct bus *bus, uint64_t addr)
{
	unsigned int lo = 0, hi = bus->count;

	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;
		const struct bus_range *r = &bus->ranges[mid];

		if (r->base + r->len <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_handler handler,
		 void *opaque, const char *name)
{
	struct bus_range *grown;
	unsigned int at;
	int ret = 0;

	if (len == 0 || base + len < base)
		return -EINVAL;
	pthread_rwlock_wrlock(&bus->lock);
	at = bus_lower_bound(bus, base);
	if (at < bus->count && bus->ranges[at].base < base + len) {
		ret = -EEXIST;
		goto out;
	}
	grown = realloc(bus->ranges, (bus->count + 1) * sizeof(*grown));
	if (!grown) {
		ret = -ENOMEM;
		goto out;
	}
	bus->ranges = grown;
	memmove(&grown[at + 1], &grown[at], (bus->count - at) * sizeof(*grown));
	grown[at] = (struct bus_range){ base, len, handler, opaque, name };
	bus->count++;
out:
	pthread_rwlock_unlock(&bus->lock);
	return ret;
}

int bus_unregister(struct bus *bus, uint64_t base)
{
	unsigned int at;
	int ret = -ENOENT;

	pthread_rwlock_wrlock(&bus->lock);
	at = bus_lower_bound(bus, base);
	if (at < bus->count && bus->ranges[at].base == base) {
		memmove(&bus->ranges[at], &bus->ranges[at + 1],
			(bus->count - at - 1) * sizeof(*bus->ranges));
		bus->count--;
		ret = 0;
	}
	pthread_rwlock_unlock(&bus->lock);
	return ret;
}

bool bus_access(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write)
{
	struct bus_range r = { 0 };
	bool found = false;
	unsigned int at;

	pthread_rwlock_rdlock(&bus->lock);
	at = bus_lower_bound(bus, addr);
	if (at < bus->count && bus->ranges[at].base <= addr &&
	    addr + len <= bus->ranges[at].base + bus->ranges[at].len) {
		r = bus->ranges[at];
		found = true;
	}
	pthread_rwlock_unlock(&bus->lock);
	if (!found) {
		__atomic_add_fetch(&bus->unhandled, 1, __ATOMIC_RELAXED);
		if (!is_write)
			memset(data, 0xff, len);
		return false;
	}
	r.handler(r.opaque, addr - r.base, data, len, is_write);
	return true;
}
