/* 16550A UART (src/hw/serial.c) at COM1 with IRQ 4: the guest console.
 * Transmitted bytes go to out_fd through a 64 KiB ring that the event loop
 * drains without ever blocking the vCPU; received bytes come from the loop. */
#ifndef VIREO_SERIAL_H
#define VIREO_SERIAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/loop.h"
#include "vireo/vmm.h"

struct serial;

/* Guest output lost because nobody read it fast enough (bytes). */
struct serial_stats {
	uint64_t dropped_bytes;        /* never reached out_fd (full or gone) */
	uint64_t client_dropped_bytes; /* never reached the console client */
};

/* Registers the UART's ports on vm->pio. out_fd (-1: none) is not taken:
 * the UART writes to a descriptor of its own that never blocks. Returns
 * NULL with err_set(). */
struct serial *serial_create(struct vm *vm, int out_fd);
void serial_destroy(struct serial *s);
/* Drains the transmit ring on `loop` (its thread calls everything below).
 * Until then, output waits in the ring. Returns 0 or -errno. */
int serial_output_start(struct serial *s, struct loop *loop);
/* Once the vCPUs are stopped: writes what is left in the ring, waiting at
 * most timeout_ms in all for outputs that are full. */
void serial_output_flush(struct serial *s, int timeout_ms);
void serial_get_stats(struct serial *s, struct serial_stats *out);
/* A second sink for the guest's output (the console socket's client);
 * -1 for none. It gets the output from now on; a client that falls a
 * whole ring behind loses its oldest bytes. The UART uses a duplicate of
 * fd: the caller may close fd once it has set another. */
void serial_set_tee(struct serial *s, int fd);
/* Queues bytes for the guest to read; returns how many fit. */
size_t serial_receive(struct serial *s, const uint8_t *buf, size_t len);
/* Free space in the receive buffer, so the loop reads no more than fits. */
size_t serial_rx_room(struct serial *s);
/* Input flow control: when the buffer is full, the reader stops reading
 * its source and calls serial_rx_wait(); serial_rx_space_fd() (an eventfd)
 * becomes readable once the guest has read the buffer down to half.
 * Returns true, arming nothing, if there is room already. */
bool serial_rx_wait(struct serial *s);
int serial_rx_space_fd(struct serial *s);

/* Snapshot state (STATE_SEC_SERIAL): save with the vCPUs paused; restore
 * before they run. serial_restore returns 0 or -errno with err_set(). */
struct state_writer;
struct state_reader;
void serial_save(struct serial *s, struct state_writer *w);
int serial_restore(struct serial *s, const struct state_reader *r);

/* Pure register model, for unit tests: one access at offset 0..7. */
uint8_t serial_read_reg(struct serial *s, unsigned int offset);
void serial_write_reg(struct serial *s, unsigned int offset, uint8_t value);

#endif
