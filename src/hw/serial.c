/* A 16550A UART as Linux's 8250 driver and the probe guest use it:
 * transmit is instantaneous (THR always empty), receive has a buffer fed by
 * the event loop, loopback mode works (the 8250 driver's autoconfig checks
 * it), and the THRE/RDA interrupts drive IRQ 4 gated by MCR.OUT2.
 *
 * Transmitted bytes go into a ring that the event loop drains to the
 * outputs with writes that never wait: the vCPU never blocks on a reader
 * (a full pipe, a stopped terminal), so pause and stop always get through.
 * Like a real serial line nobody listens to, bytes that find the ring full
 * are lost and counted; the guest never sees back-pressure. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/serial.h"
#include "vireo/state.h"

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
#define TX_SIZE   65536	/* the transmit ring */
#define TX_CHUNK  4096	/* bytes per write */

/* One output of the transmit ring. fd is ours (its own description, on
 * which writes never wait) and only the event loop writes to it; fd, dead
 * and pos change under the UART lock. */
struct serial_sink {
	struct serial *s;
	int fd;            /* -1: none */
	bool is_sock;      /* written with send(MSG_DONTWAIT) */
	bool waiting;      /* registered on the loop for EPOLLOUT */
	bool dead;         /* a write failed for good */
	uint64_t pos;      /* the next ring position it has to write */
};

struct serial {
	struct vm *vm;
	struct serial_sink out;  /* the VMM's output (stdout) */
	struct serial_sink tee;  /* the console socket's client */
	pthread_mutex_t lock;
	uint8_t ier, lcr, mcr, scr, fcr, dll, dlm;
	bool thre_pending; /* THR-empty interrupt waiting to be seen in IIR */
	bool irq_level;
	uint8_t rx[RX_SIZE];
	size_t rx_head, rx_len;
	int space_fd;      /* eventfd: the guest made room (serial_rx_wait) */
	bool rx_waiting;
	uint8_t tx[TX_SIZE];
	uint64_t tx_head;  /* bytes ever put in the ring; position of the next */
	int tx_fd;         /* eventfd: the ring has bytes for the loop */
	bool tx_kicked;    /* tx_fd signalled and not yet drained from */
	bool kick_now;     /* serial_io() signals tx_fd after unlocking */
	struct serial_stats stats;
	struct loop *loop; /* serial_output_start() */
};

/* Under the lock, after the guest took bytes out of the receive buffer:
 * wakes the input source parked on it (serial_rx_wait) once half is free.
 * Linux's 8250 driver clears the FIFO when the port opens, so a clear
 * makes room too: a parked source must not wait for a read that a guest
 * with nothing pending never does. */
static void rx_made_room(struct serial *s)
{
	if (s->rx_waiting && s->rx_len <= RX_SIZE / 2) {
		s->rx_waiting = false;
		eventfd_write(s->space_fd, 1);
	}
}

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

static bool sink_live(const struct serial_sink *k)
{
	return k->fd >= 0 && !k->dead;
}

/* Called with the lock held. The output keeps every byte it has not
 * written: a byte that finds its part of the ring full is dropped (for the
 * client too). A console client that lags a whole ring behind loses its
 * oldest bytes instead, so it never holds the output back. */
static void serial_tx_push(struct serial *s, uint8_t byte)
{
	bool out_live = sink_live(&s->out), tee_live = sink_live(&s->tee);

	if (s->out.dead) {
		s->stats.dropped_bytes++;
	} else if (out_live && s->tx_head - s->out.pos >= TX_SIZE) {
		s->stats.dropped_bytes++;
		return;
	}
	if (!out_live && !tee_live)
		return;
	if (tee_live && s->tx_head - s->tee.pos >= TX_SIZE) {
		s->tee.pos++;
		s->stats.client_dropped_bytes++;
	}
	s->tx[s->tx_head++ % TX_SIZE] = byte;
	if (!s->tx_kicked)
		s->tx_kicked = s->kick_now = true;
}

static void serial_transmit(struct serial *s, uint8_t byte)
{
	if (s->mcr & MCR_LOOP)
		serial_rx_push(s, byte);
	else
		serial_tx_push(s, byte);
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
		rx_made_room(s);
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
		if (value & 0x02) { /* clear receive FIFO */
			s->rx_len = 0;
			rx_made_room(s);
		}
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
	bool kick;

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
	kick = s->kick_now;
	s->kick_now = false;
	pthread_mutex_unlock(&s->lock);
	if (kick)
		eventfd_write(s->tx_fd, 1);
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

/* Copies what `k` has still to write (at most TX_CHUNK bytes, from ring
 * position *from) out of the ring: the lock is not held while writing, and
 * the ring may overwrite a lagging client's bytes meanwhile. */
static size_t sink_take(struct serial *s, struct serial_sink *k, uint8_t *buf, uint64_t *from)
{
	size_t n, first;

	pthread_mutex_lock(&s->lock);
	s->tx_kicked = false;	/* later bytes signal again */
	*from = k->pos;
	n = s->tx_head - k->pos < TX_CHUNK ? (size_t)(s->tx_head - k->pos) : TX_CHUNK;
	first = TX_SIZE - (size_t)(k->pos % TX_SIZE);
	if (first > n)
		first = n;
	memcpy(buf, s->tx + k->pos % TX_SIZE, first);
	memcpy(buf + first, s->tx, n - first);
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Writes what `k` has pending without waiting: 0 once all is written,
 * -EAGAIN when the output is full, another -errno when it is gone. */
static int sink_flush(struct serial *s, struct serial_sink *k)
{
	uint8_t buf[TX_CHUNK];
	uint64_t from;
	size_t n;
	ssize_t w;

	while ((n = sink_take(s, k, buf, &from))) {
		w = k->is_sock ? send(k->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL)
			       : write(k->fd, buf, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		pthread_mutex_lock(&s->lock);
		if (k->pos < from + (uint64_t)w)	/* unless the ring skipped it ahead */
			k->pos = from + (uint64_t)w;
		pthread_mutex_unlock(&s->lock);
	}
	return 0;
}

static void sink_kill(struct serial *s, struct serial_sink *k)
{
	pthread_mutex_lock(&s->lock);
	k->dead = true;
	pthread_mutex_unlock(&s->lock);
}

static void serial_writable(struct loop *loop, int fd, uint32_t events, void *opaque);

/* On the event loop: writes what it can, and waits for EPOLLOUT if the
 * output is full. */
static void sink_drain(struct serial_sink *k)
{
	int ret;

	if (k->fd < 0 || k->dead || k->waiting)
		return;
	ret = sink_flush(k->s, k);
	if (ret == -EAGAIN)
		k->waiting = !loop_add(k->s->loop, k->fd, EPOLLOUT, serial_writable, k);
	else if (ret)
		sink_kill(k->s, k);
}

static void serial_writable(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct serial_sink *k = opaque;

	(void)events;
	loop_del(loop, fd);
	k->waiting = false;
	sink_drain(k);
}

static void serial_tx_kick(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct serial *s = opaque;
	eventfd_t v;

	(void)loop;
	(void)events;
	eventfd_read(fd, &v);
	sink_drain(&s->out);
	sink_drain(&s->tee);
}

int serial_output_start(struct serial *s, struct loop *loop)
{
	s->loop = loop;
	return loop_add(loop, s->tx_fd, EPOLLIN, serial_tx_kick, s);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void serial_output_flush(struct serial *s, int timeout_ms)
{
	struct serial_sink *sinks[2] = { &s->out, &s->tee };
	int64_t deadline = now_ms() + timeout_ms;
	struct pollfd pfd[2];
	int n, ret;

	for (;;) {
		n = 0;
		for (int i = 0; i < 2; i++) {
			if (!sink_live(sinks[i]))
				continue;
			ret = sink_flush(s, sinks[i]);
			if (ret == -EAGAIN) {
				pfd[n++] = (struct pollfd){ .fd = sinks[i]->fd, .events = POLLOUT };
			} else if (ret) {
				sink_kill(s, sinks[i]);
			}
		}
		if (!n || now_ms() >= deadline)
			return;
		if (poll(pfd, (nfds_t)n, (int)(deadline - now_ms())) < 0 && errno != EINTR)
			return;
	}
}

void serial_get_stats(struct serial *s, struct serial_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->stats;
	pthread_mutex_unlock(&s->lock);
}

/* Our own descriptor of the output, on which writes never wait. Pipes,
 * FIFOs and terminals are reopened with O_NONBLOCK: setting the flag on
 * the description we were given would change it for everyone sharing it
 * (the shell's terminal, our own stderr). Sockets take MSG_DONTWAIT;
 * files and block devices never wait for a reader. */
static int sink_open(struct serial_sink *k, int fd)
{
	struct stat st;
	char path[40];
	int flags;

	k->fd = -1;
	if (fd < 0 || fstat(fd, &st) < 0)	/* started with stdout closed: no output */
		return 0;
	k->is_sock = S_ISSOCK(st.st_mode);
	if (!k->is_sock && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		k->fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (k->fd >= 0)
			return 0;
	}
	k->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (k->fd < 0)
		return err_set(-errno, "serial output: %m");
	/* No /proc: the flag on the shared description, rather than a vCPU
	 * that can block. */
	flags = fcntl(k->fd, F_GETFL);
	if (!k->is_sock && flags >= 0 && !(flags & O_NONBLOCK))
		fcntl(k->fd, F_SETFL, flags | O_NONBLOCK);
	return 0;
}

static void serial_free(struct serial *s)
{
	if (s->out.fd >= 0)
		close(s->out.fd);
	if (s->tx_fd >= 0)
		close(s->tx_fd);
	if (s->space_fd >= 0)
		close(s->space_fd);
	free(s);
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
	s->out = (struct serial_sink){ .s = s, .fd = -1 };
	s->tee = (struct serial_sink){ .s = s, .fd = -1, .is_sock = true };
	s->mcr = MCR_OUT2;
	s->space_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->tx_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->space_fd < 0 || s->tx_fd < 0) {
		err_set(-errno, "eventfd: %m");
		goto fail;
	}
	if (sink_open(&s->out, out_fd))
		goto fail;
	pthread_mutex_init(&s->lock, NULL);
	if (vm) {
		ret = bus_register(&vm->pio, PORT_COM1, 8, serial_io, s, "com1");
		if (ret) {
			err_set(ret, "cannot register COM1 ports");
			pthread_mutex_destroy(&s->lock);
			goto fail;
		}
	}
	return s;
fail:
	serial_free(s);
	return NULL;
}

static void sink_forget(struct serial_sink *k)
{
	if (k->waiting)
		loop_del(k->s->loop, k->fd);
	k->waiting = false;
}

void serial_set_tee(struct serial *s, int fd)
{
	int old = s->tee.fd, ours = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;

	/* A descriptor of our own, to wait for EPOLLOUT on it where the
	 * caller's is registered for input. */
	sink_forget(&s->tee);
	pthread_mutex_lock(&s->lock);
	s->tee.fd = ours;
	s->tee.dead = false;
	s->tee.pos = s->tx_head;	/* a new client sees output from now on */
	pthread_mutex_unlock(&s->lock);
	if (old >= 0)
		close(old);
}

/* STATE_SEC_SERIAL: the registers (ier lcr mcr scr fcr dll dlm, u8 each),
 * u8 THRE pending, u8 IRQ level, then the receive buffer's unread bytes as
 * a blob. Output already queued for the host is not guest state. */
void serial_save(struct serial *s, struct state_writer *w)
{
	uint8_t rx[RX_SIZE];

	pthread_mutex_lock(&s->lock);
	state_begin(w, STATE_SEC_SERIAL, 0, STATE_SECTION_CRITICAL);
	state_put_u8(w, s->ier);
	state_put_u8(w, s->lcr);
	state_put_u8(w, s->mcr);
	state_put_u8(w, s->scr);
	state_put_u8(w, s->fcr);
	state_put_u8(w, s->dll);
	state_put_u8(w, s->dlm);
	state_put_u8(w, s->thre_pending);
	state_put_u8(w, s->irq_level);
	for (size_t i = 0; i < s->rx_len; i++)
		rx[i] = s->rx[(s->rx_head + i) % RX_SIZE];
	state_put_blob(w, rx, s->rx_len);
	state_end(w);
	pthread_mutex_unlock(&s->lock);
}

/* The IRQ line's level comes back with the irqchip's state: it is only
 * recorded here, not driven. */
int serial_restore(struct serial *s, const struct state_reader *r)
{
	uint8_t reg[9], rx[RX_SIZE];
	struct state_cursor c;
	size_t n;
	int ret = state_section(r, STATE_SEC_SERIAL, 0, &c);

	if (ret)
		return ret;
	state_get_bytes(&c, reg, sizeof(reg));
	n = state_get_blob_max(&c, rx, sizeof(rx));
	ret = state_done(&c);
	if (ret)
		return ret;
	pthread_mutex_lock(&s->lock);
	s->ier = reg[0] & 0x0f;
	s->lcr = reg[1];
	s->mcr = reg[2] & 0x1f;
	s->scr = reg[3];
	s->fcr = reg[4] & 0xc9;
	s->dll = reg[5];
	s->dlm = reg[6];
	s->thre_pending = reg[7] != 0;
	s->irq_level = reg[8] != 0;
	memcpy(s->rx, rx, n);
	s->rx_head = 0;
	s->rx_len = n;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	serial_set_tee(s, -1);
	sink_forget(&s->out);
	pthread_mutex_destroy(&s->lock);
	serial_free(s);
}
