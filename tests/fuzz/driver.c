/* Standalone driver for libFuzzer-style targets, so each fuzz target runs as
 * a regression test without clang: it feeds every file of the seed corpus
 * directory given as argv[1], then a bounded number of deterministic
 * mutations of each seed (byte flips, truncations, length-field smashing).
 * With clang, the same targets link against -fsanitize=fuzzer instead. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void mutate_and_run(const uint8_t *seed, size_t len, int rounds) {
  uint8_t *buf = malloc(len + 64);
  if (buf == NULL) return;
  for (int r = 0; r < rounds; r++) {
    size_t n = len;
    memcpy(buf, seed, len);
    switch (rng() % 4) {
      case 0: /* flip a few bytes */
        for (int i = 0; i < 4 && n > 0; i++) buf[rng() % n] ^= (uint8_t)(1u << (rng() % 8));
        break;
      case 1: /* truncate */
        n = n > 0 ? rng() % n : 0;
        break;
      case 2: /* set a byte to an extreme */
        if (n > 0) buf[rng() % n] = (rng() & 1) ? 0xff : 0x00;
        break;
      case 3: /* append garbage */
        for (int i = 0; i < 16; i++) buf[n++] = (uint8_t)rng();
        break;
    }
    LLVMFuzzerTestOneInput(buf, n);
  }
  free(buf);
}

int main(int argc, char **argv) {
  int files = 0;
  LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
  if (argc > 1) {
    DIR *d = opendir(argv[1]);
    if (d == NULL) {
      fprintf(stderr, "no corpus at %s\n", argv[1]);
      return 1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof(path), "%s/%s", argv[1], e->d_name);
      FILE *f = fopen(path, "rb");
      if (f == NULL) continue;
      uint8_t buf[65536];
      size_t n = fread(buf, 1, sizeof(buf), f);
      fclose(f);
      LLVMFuzzerTestOneInput(buf, n);
      mutate_and_run(buf, n, 2000);
      files++;
    }
    closedir(d);
  }
  printf("fuzz driver: %d seed files, 2000 mutations each: 1 passed, 0 failed\n", files);
  return 0;
}
