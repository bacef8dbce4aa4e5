/* Compiled by the tests in tests/layers/ with one layer's include root and
 * -DPROBE_HEADER=<some/header.h>: an upward include must fail to compile
 * ("No such file or directory"), a downward one must compile. */
#include PROBE_HEADER

int capstan_layer_probe;
