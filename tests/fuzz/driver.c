/* Standalone driver for libFuzzer-style targets, so each fuzz target runs as
 * a regression test without clang: it feeds every file of the seed corpus
 * directory given as argv[1], then a bounded number of deterministic
 * mutations of each seed (byte flips, truncations, length-field smashing)
 * for at most MUTATION_SECONDS.
 * With clang, the same targets link against -fsanitize=fuzzer instead. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static double now_seconds(void);

static void mutate_and_run(const uint8_t *seed, size_t len, int rounds, double deadline) {
  uint8_t *buf = malloc(len + 64);
  if (buf == NULL) return;
  for (int r = 0; r < rounds; r++) {
    if (r % 64 == 0 && now_seconds() >= deadline) break;
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

/* Seconds of mutations per target at most (every seed is replayed first,
 * whatever the time): the socket-based targets (TFTP, HTTP) run a few
 * hundred inputs a second, and the corpus grows with every campaign.
 * $CAPSTAN_FUZZ_DRIVER_SECONDS overrides. */
#define MUTATION_SECONDS 60

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
  uint8_t *data;
  size_t len;
} seed_t;

int main(int argc, char **argv) {
  int files = 0, mutated = 0;
  seed_t *seeds = NULL;
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
      uint8_t *buf = malloc(65536);
      if (buf == NULL) abort();
      size_t n = fread(buf, 1, 65536, f);
      fclose(f);
      /* Every seed replayed as it is: the regression inputs. */
      LLVMFuzzerTestOneInput(buf, n);
      seed_t *p = realloc(seeds, (size_t)(files + 1) * sizeof(*seeds));
      if (p == NULL) abort();
      seeds = p;
      seeds[files++] = (seed_t){buf, n};
    }
    closedir(d);
  }
  double budget = MUTATION_SECONDS;
  const char *env = getenv("CAPSTAN_FUZZ_DRIVER_SECONDS");
  if (env != NULL) budget = atof(env);
  double deadline = now_seconds() + budget;
  for (int i = 0; i < files; i++) {
    if (now_seconds() < deadline) {
      mutate_and_run(seeds[i].data, seeds[i].len, 2000, deadline);
      mutated++;
    }
    free(seeds[i].data);
  }
  free(seeds);
  printf(
      "fuzz driver: %d seed files replayed, %d of them with up to 2000 mutations: 1 passed, 0 "
      "failed\n",
      files, mutated);
  return 0;
}
