/* i8042 keyboard controller with no keyboard or mouse (include/vireo/i8042.h).
 * A firmware probe that got no answer waited for one, polling the status
 * port 10,000 times (SeaBIOS's i8042_wait_read: ~4 s of a nested disk boot). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "vireo/i8042.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define STATUS_OBF      0x01 /* a byte waits in the output buffer */
#define STATUS_SYS      0x04 /* the system flag: POST passed */
#define STATUS_CMD      0x08 /* the last write went to the command port */
#define STATUS_UNLOCKED 0x10 /* the keyboard is not inhibited */
#define STATUS_AUX      0x20 /* the waiting byte is the mouse's */
#define STATUS_TIMEOUT  0x40 /* the device sent to did not answer */

#define CTR_KBD_OFF     0x10
#define CTR_AUX_OFF     0x20
#define CTR_DEFAULT     (0x04 | CTR_KBD_OFF | CTR_AUX_OFF)

#define NO_DEVICE       0xfe /* what the controller returns for an absent device */

enum next_data { TO_KBD, TO_CTR, TO_OUTPORT, TO_KBD_OUT, TO_AUX_OUT, TO_AUX };

struct i8042 {
	pthread_mutex_t lock;
	uint8_t status;
	uint8_t out;
	uint8_t ctr;
	enum next_data next; /* where the next data-port write goes */
	struct vm *vm;       /* whose reset line it is (NULL for a model) */
};

struct i8042 *i8042_create_model(void)
{
	struct i8042 *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->status = STATUS_SYS | STATUS_UNLOCKED;
	c->ctr = CTR_DEFAULT;
	return c;
}

void i8042_destroy(struct i8042 *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static void put_out(struct i8042 *c, uint8_t byte, uint8_t flags)
{
	c->out = byte;
	c->status = (uint8_t)((c->status & ~(STATUS_AUX | STATUS_TIMEOUT)) | STATUS_OBF | flags);
}

uint8_t i8042_read(struct i8042 *c, unsigned int port)
{
	uint8_t v;

	pthread_mutex_lock(&c->lock);
	if (port == PORT_I8042_CMD) {
		v = c->status;
	} else {
		v = c->out;
		c->status &= (uint8_t)~(STATUS_OBF | STATUS_AUX | STATUS_TIMEOUT);
	}
	pthread_mutex_unlock(&c->lock);
	return v;
}

/* A command byte; true when it pulses the reset line. */
static bool command(struct i8042 *c, uint8_t cmd)
{
	c->next = TO_KBD;
	switch (cmd) {
	case 0x20: put_out(c, c->ctr, 0); break;        /* read the command byte */
	case 0x60: c->next = TO_CTR; break;             /* write it */
	case 0xa7: c->ctr |= CTR_AUX_OFF; break;
	case 0xa8: c->ctr &= (uint8_t)~CTR_AUX_OFF; break;
	case 0xa9: put_out(c, 0x00, 0); break;          /* mouse port test: fine */
	case 0xaa: put_out(c, 0x55, 0); break;          /* self-test passed */
	case 0xab: put_out(c, 0x00, 0); break;          /* keyboard port test: fine */
	case 0xad: c->ctr |= CTR_KBD_OFF; break;
	case 0xae: c->ctr &= (uint8_t)~CTR_KBD_OFF; break;
	case 0xd1: c->next = TO_OUTPORT; break;
	case 0xd2: c->next = TO_KBD_OUT; break;
	case 0xd3: c->next = TO_AUX_OUT; break;
	case 0xd4: c->next = TO_AUX; break;
	default:
		/* 0xf0-0xff pulse the output lines given by the clear low bits;
		 * bit 0 is the CPU's reset. */
		return (cmd & 0xf0) == 0xf0 && !(cmd & 1);
	}
	return false;
}

static void data(struct i8042 *c, uint8_t v)
{
	enum next_data to = c->next;

	c->next = TO_KBD;
	switch (to) {
	case TO_CTR: c->ctr = v; break;
	case TO_OUTPORT: break;         /* A20 is always on; reset goes through 0xfe */
	case TO_KBD_OUT: put_out(c, v, 0); break;
	case TO_AUX_OUT: put_out(c, v, STATUS_AUX); break;
	case TO_AUX: put_out(c, NO_DEVICE, STATUS_AUX | STATUS_TIMEOUT); break;
	case TO_KBD: put_out(c, NO_DEVICE, STATUS_TIMEOUT); break;
	}
}

bool i8042_write(struct i8042 *c, unsigned int port, uint8_t value)
{
	bool reset = false;

	pthread_mutex_lock(&c->lock);
	if (port == PORT_I8042_CMD) {
		c->status |= STATUS_CMD;
		reset = command(c, value);
	} else {
		c->status &= (uint8_t)~STATUS_CMD;
		data(c, value);
	}
	pthread_mutex_unlock(&c->lock);
	return reset;
}

/* Ports 0x60-0x64; 0x61-0x63 (the PC's system control port B and unused
 * ports) read 0 and ignore writes. */
static void i8042_io(void *opaque, uint64_t offset, uint8_t *data_, uint32_t len, bool is_write)
{
	struct i8042 *c = opaque;
	unsigned int port = PORT_I8042_DATA + (unsigned int)offset;

	if (port != PORT_I8042_DATA && port != PORT_I8042_CMD) {
		if (!is_write)
			bus_put(data_, len, 0);
		return;
	}
	if (!is_write)
		bus_put(data_, len, i8042_read(c, port));
	else if (i8042_write(c, port, data_[0]))
		vm_request_stop(c->vm, VM_EXIT_REBOOT);
}

struct i8042 *i8042_create(struct vm *vm)
{
	struct i8042 *c = i8042_create_model();
	int ret;

	if (!c) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	c->vm = vm;
	ret = bus_register(&vm->pio, PORT_I8042_DATA, PORT_I8042_CMD - PORT_I8042_DATA + 1,
			   i8042_io, c, "i8042");
	if (ret) {
		err_set(ret, "cannot register the i8042 ports");
		i8042_destroy(c);
		return NULL;
	}
	return c;
}
