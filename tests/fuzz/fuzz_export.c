/* libFuzzer target: the export archive reader (src/mgr/export-archive.c),
 * which reads tar files that come from anywhere (vireo vm import FILE).
 * The input is an archive: its first entry is read as the manifest would
 * be, then every entry is listed, and the data of each entry of at most
 * 1 MiB is copied out as an import does (larger ones are refused by the
 * import against the manifest before a byte is read). */
#include <stddef.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../src/mgr/snapshot-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char in_path[64], out_path[64];

static void paths(void)
{
	if (in_path[0])
		return;
	snprintf(in_path, sizeof(in_path), "/tmp/fuzz_export.%d.tar", (int)getpid());
	snprintf(out_path, sizeof(out_path), "/tmp/fuzz_export.%d.out", (int)getpid());
}

static void walk(struct export_reader *r)
{
	char rel[256], hex[65], *text = NULL;
	uint64_t len;
	int out;

	if (!export_reader_text(r, "manifest.json", &text, 1 << 20))
		free(text);
	for (int n = 0; n < 64 && export_reader_next(r, rel, sizeof(rel), &len) > 0; n++) {
		if (len > (1u << 20))
			continue;
		out = open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (out < 0)
			return;
		export_reader_copy(r, out, len, hex);
		close(out);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct export_reader *r;
	FILE *f;

	paths();
	f = fopen(in_path, "wb");
	if (!f)
		return 0;
	fwrite(data, 1, size, f);
	fclose(f);
	if (!export_reader_open(in_path, &r)) {
		walk(r);
		export_reader_close(r);
	}
	unlink(in_path);
	unlink(out_path);
	return 0;
}
