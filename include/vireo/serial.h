/* 16550A UART (src/hw/serial.c) at COM1 with IRQ 4: the guest console.
 * Transmitted bytes go to out_fd; received bytes come from the event loop. */
#ifndef VIREO_SERIAL_H
#define VIREO_SERIAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/vmm.h"

struct serial;

/* Registers the UART's ports on vm->pio. Returns NULL with err_set(). */
struct serial *serial_create(struct vm *vm, int out_fd);
void serial_destroy(struct serial *s);
/* A second sink for the guest's output (the console socket's client);
 * -1 for none. Writes to it never block; the caller closes fd only after
 * setting another. */
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

/* Pure register model, for unit tests: one access at offset 0..7. */
uint8_t serial_read_reg(struct serial *s, unsigned int offset);
void serial_write_reg(struct serial *s, unsigned int offset, uint8_t value);

#endif
