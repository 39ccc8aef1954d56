/* A 16550A UART as Linux's 8250 driver and the probe guest use it:
 * transmit is instantaneous (THR always empty), receive has a buffer fed by
 * the event loop, loopback mode works (the 8250 driver's autoconfig checks
 * it), and the THRE/RDA interrupts drive IRQ 4 gated by MCR.OUT2. */
#include <errno.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/serial.h"

enum {
	REG_DATA = 0, REG_IER = 1, REG_IIR_FCR = 2, REG_LCR = 3,
	REG_MCR = 4, REG_LSR = 5, REG_MSR = 6, REG_SCR = 7,
};
#define IER_RDA   0x01
#define IER_THRE  0x02
#define IIR_NONE  0x01
#define IIR_THRE  0x02
#define IIR_RDA   0x04
#define IIR_FIFO  0xc0
#define LCR_DLAB  0x80
#define MCR_OUT2  0x08
#define MCR_LOOP  0x10
#define LSR_DR    0x01
#define LSR_THRE  0x20
#define LSR_TEMT  0x40
#define MSR_NORMAL 0xb0 /* DCD, DSR, CTS */
#define RX_SIZE   4096

struct serial {
	struct vm *vm;
	int out_fd;
	int tee_fd;        /* a console client (socket), or -1 */
	pthread_mutex_t lock;
	uint8_t ier, lcr, mcr, scr, fcr, dll, dlm;
	bool thre_pending; /* THR-empty interrupt waiting to be seen in IIR */
	bool irq_level;
	uint8_t rx[RX_SIZE];
	size_t rx_head, rx_len;
	int space_fd;      /* eventfd: the guest made room (serial_rx_wait) */
	bool rx_waiting;
};

static bool serial_rx_ready(const struct serial *s)
{
	return s->rx_len > 0;
}

static uint8_t serial_iir(const struct serial *s)
{
	uint8_t fifo = (s->fcr & 1) ? IIR_FIFO : 0;

	if ((s->ier & IER_RDA) && serial_rx_ready(s))
		return IIR_RDA | fifo;
	if ((s->ier & IER_THRE) && s->thre_pending)
		return IIR_THRE | fifo;
	return IIR_NONE | fifo;
}

/* Recomputes the IRQ line; called with the lock held after any change. */
static void serial_update_irq(struct serial *s)
{
	bool level = !(serial_iir(s) & IIR_NONE) && (s->mcr & MCR_OUT2);

	if (level != s->irq_level) {
		s->irq_level = level;
		if (s->vm)
			vm_set_irq(s->vm, IRQ_COM1, level);
	}
}

static void serial_rx_push(struct serial *s, uint8_t byte)
{
	if (s->rx_len < RX_SIZE) {
		s->rx[(s->rx_head + s->rx_len) % RX_SIZE] = byte;
		s->rx_len++;
	}
}

static void serial_transmit(struct serial *s, uint8_t byte)
{
	if (s->mcr & MCR_LOOP) {
		serial_rx_push(s, byte);
	} else if (s->out_fd >= 0) {
		while (write(s->out_fd, &byte, 1) < 0 && errno == EINTR)
			;
	}
	/* Never block the vCPU on a slow client: a byte it cannot take is lost. */
	if (!(s->mcr & MCR_LOOP) && s->tee_fd >= 0)
		send(s->tee_fd, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	s->thre_pending = true;
}

static uint8_t serial_msr(const struct serial *s)
{
	uint8_t m = s->mcr;

	if (!(m & MCR_LOOP))
		return MSR_NORMAL;
	/* Loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD. */
	return (uint8_t)(((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4));
}

uint8_t serial_read_reg(struct serial *s, unsigned int offset)
{
	uint8_t v = 0;

	switch (offset) {
	case REG_DATA:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		if (s->rx_len) {
			v = s->rx[s->rx_head];
			s->rx_head = (s->rx_head + 1) % RX_SIZE;
			s->rx_len--;
		}
		if (s->rx_waiting && s->rx_len <= RX_SIZE / 2) {
			s->rx_waiting = false;
			eventfd_write(s->space_fd, 1);
		}
		return v;
	case REG_IER:
		return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
	case REG_IIR_FCR:
		v = serial_iir(s);
		if ((v & 0x0f) == IIR_THRE)
			s->thre_pending = false; /* reading IIR acknowledges THRE */
		return v;
	case REG_LCR:
		return s->lcr;
	case REG_MCR:
		return s->mcr;
	case REG_LSR:
		return (uint8_t)(LSR_THRE | LSR_TEMT | (serial_rx_ready(s) ? LSR_DR : 0));
	case REG_MSR:
		return serial_msr(s);
	default:
		return s->scr;
	}
}

void serial_write_reg(struct serial *s, unsigned int offset, uint8_t value)
{
	switch (offset) {
	case REG_DATA:
		if (s->lcr & LCR_DLAB)
			s->dll = value;
		else
			serial_transmit(s, value);
		break;
	case REG_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = value;
		} else {
			/* Enabling THRE with an empty THR raises it at once. */
			if ((value & IER_THRE) && !(s->ier & IER_THRE))
				s->thre_pending = true;
			s->ier = value & 0x0f;
		}
		break;
	case REG_IIR_FCR:
		s->fcr = value & 0xc9;
		if (value & 0x02) /* clear receive FIFO */
			s->rx_len = 0;
		break;
	case REG_LCR:
		s->lcr = value;
		break;
	case REG_MCR:
		s->mcr = value & 0x1f;
		break;
	case REG_SCR:
		s->scr = value;
		break;
	default:
		break; /* LSR and MSR are read-only */
	}
}

static void serial_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct serial *s = opaque;

	if (len != 1) { /* the UART has byte registers only */
		if (!is_write)
			memset(data, 0xff, len);
		return;
	}
	pthread_mutex_lock(&s->lock);
	if (is_write)
		serial_write_reg(s, (unsigned int)offset, data[0]);
	else
		data[0] = serial_read_reg(s, (unsigned int)offset);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

size_t serial_receive(struct serial *s, const uint8_t *buf, size_t len)
{
	size_t n;

	pthread_mutex_lock(&s->lock);
	for (n = 0; n < len && s->rx_len < RX_SIZE; n++)
		serial_rx_push(s, buf[n]);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return n;
}

size_t serial_rx_room(struct serial *s)
{
	size_t room;

	pthread_mutex_lock(&s->lock);
	room = RX_SIZE - s->rx_len;
	pthread_mutex_unlock(&s->lock);
	return room;
}

bool serial_rx_wait(struct serial *s)
{
	bool room;

	pthread_mutex_lock(&s->lock);
	room = s->rx_len < RX_SIZE;
	s->rx_waiting = !room;
	pthread_mutex_unlock(&s->lock);
	return room;
}

int serial_rx_space_fd(struct serial *s)
{
	return s->space_fd;
}

struct serial *serial_create(struct vm *vm, int out_fd)
{
	struct serial *s = calloc(1, sizeof(*s));
	int ret;

	if (!s) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	s->vm = vm;
	s->out_fd = out_fd;
	s->tee_fd = -1;
	s->mcr = MCR_OUT2;
	s->space_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->space_fd < 0) {
		err_set(-errno, "eventfd: %m");
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	if (vm) {
		ret = bus_register(&vm->pio, PORT_COM1, 8, serial_io, s, "com1");
		if (ret) {
			err_set(ret, "cannot register COM1 ports");
			close(s->space_fd);
			free(s);
			return NULL;
		}
	}
	return s;
}

void serial_set_tee(struct serial *s, int fd)
{
	pthread_mutex_lock(&s->lock);
	s->tee_fd = fd;
	pthread_mutex_unlock(&s->lock);
}

void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	close(s->space_fd);
	free(s);
}
