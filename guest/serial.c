/* COM1 output and a tiny printf. Each probe_printf call formats one line
 * into a buffer and sends it under a spinlock, so lines from several CPUs
 * never interleave. Every port access is a VM exit, so this is slow
 * (~60 µs per byte) but simple and identical on every VMM. */
#include "probe.h"

#define COM1		0x3f8
#define LSR_THRE	0x20
#define LINE_MAX	256

static volatile uint32_t serial_lock;

size_t probe_strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int probe_memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

void probe_memcpy(void *d, const void *s, size_t n)
{
	uint8_t *x = d;
	const uint8_t *y = s;

	for (size_t i = 0; i < n; i++)
		x[i] = y[i];
}

void serial_init(void)
{
	outb(COM1 + 1, 0x00);		/* IER: no interrupts */
	outb(COM1 + 3, 0x80);		/* LCR: DLAB */
	outb(COM1 + 0, 0x01);		/* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);		/* 8N1 */
	outb(COM1 + 2, 0xc7);		/* FCR: FIFO on, cleared */
	outb(COM1 + 4, 0x0b);		/* MCR: DTR RTS OUT2 */
}

static void serial_putc(char c)
{
	/* Bounded: a VMM without a THR model must not hang us. */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & LSR_THRE); i++)
		cpu_relax();
	outb(COM1, (uint8_t)c);
}

struct buf {
	char s[LINE_MAX];
	size_t n;
};

static void put(struct buf *b, char c)
{
	if (b->n < LINE_MAX - 1)
		b->s[b->n++] = c;
}

static void put_num(struct buf *b, uint64_t v, unsigned base, int width, char pad)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (width-- > n)
		put(b, pad);
	while (n)
		put(b, tmp[--n]);
}

static void format(struct buf *b, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		int width = 0, prec = -1, lng = 0;
		char pad = ' ';

		if (*fmt != '%') {
			put(b, *fmt);
			continue;
		}
		if (*++fmt == '0')
			pad = '0';
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == '.')
			for (prec = 0, fmt++; *fmt >= '0' && *fmt <= '9'; fmt++)
				prec = prec * 10 + (*fmt - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		switch (*fmt) {
		case 'd': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);

			if (v < 0)
				put(b, '-'), v = -v;
			put_num(b, (uint64_t)v, 10, width, pad);
			break;
		}
		case 'u':
			put_num(b, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad);
			break;
		case 'x':
			put_num(b, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad);
			break;
		case 's':
			for (const char *s = va_arg(ap, const char *); *s && prec--; s++)
				put(b, *s);
			break;
		case 'c':
			put(b, (char)va_arg(ap, int));
			break;
		case '%':
			put(b, '%');
			break;
		default:
			return;
		}
	}
}

/* force: used by the fault path, which may have interrupted a lock holder
 * on this CPU; it waits a bounded time and then writes anyway. */
void probe_vprintf(const char *fmt, va_list ap, bool force)
{
	struct buf b = { .n = 0 };
	unsigned long spins = 0;

	format(&b, fmt, ap);
	while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE)) {
		if (force && ++spins > 10000000)
			break;
		cpu_relax();
	}
	for (size_t i = 0; i < b.n; i++)
		serial_putc(b.s[i]);
	__atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

/* rep outsb: one VM exit for the whole buffer instead of two per byte.
 * It does not wait for THRE between bytes: for VMMs whose THR is always
 * empty (vireo's), as the flood scenario needs. */
void probe_write_fast(const char *s, size_t n)
{
	while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
	__asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"((uint16_t)COM1) : "memory");
	__atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

void probe_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	probe_vprintf(fmt, ap, false);
	va_end(ap);
}
